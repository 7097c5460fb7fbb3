"""Measure the Shapes world: VAE fidelity, the base model's held-out gold score, rollout speed, the proxy.

    python -m diffusion_gym.shapes.offline.evaluate --output-dir runs/shapes_eval

Prints and writes ``<output-dir>/shapes_eval.json`` (the figures) and ``<output-dir>/shapes_grid.png``
(prompts, the ground-truth scene and samples of the base model, each with its gold score).
Sampling uses ``StableDiffusionPipeline.__call__`` with DDIM at the guidance / steps / eta of the pipeline's
``diffusion_gym.json`` unless overridden.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffusion_gym.images import to_uint8_hwc
from diffusion_gym.prompts import split_sentences
from diffusion_gym.shapes import PIPELINE_DIR, PROXY_DIR
from diffusion_gym.shapes.gold import (
    analyse,
    gold_per_sentence,
    object_attribute_accuracy,
    parse_prompt,
    to_uint8_images,
)
from diffusion_gym.shapes.prompt_sets import (
    LONG_PROMPT,
    LONG_SCENE,
    STANDARD_PROMPT,
    STANDARD_SCENE,
    heldout_scenes_and_prompts,
)
from diffusion_gym.shapes.scenes import POSITION_PHRASES, render, with_random_cells

POSITION_BLIND_DRAWS = 8  # random relocations of each held-out scene for the position-blind ceiling
POSITION_PROBE_SEEDS = 16  # initial noises of the position-word probe, each drawn under all 9 position phrases


@dataclass
class EvalReport:
    pipeline: str
    guidance_scale: float
    num_inference_steps: int
    eta: float
    samples_per_prompt: int
    num_heldout_prompts: int
    ground_truth_gold: float  # rendered held-out scenes vs their captions (the scorer's ceiling)
    shuffled_caption_floor: float  # rendered held-out scenes vs other scenes' captions
    # Rendered held-out scenes with the objects moved to random cells: the best a model that ignores position
    # words can score (mean over POSITION_BLIND_DRAWS draws per scene).
    position_blind_ceiling: float
    vae_reconstruction_gold: float  # VAE(encode -> decode) of the held-out scenes
    vae_reconstruction_gold_by_sentence_type: dict[str, float]
    base_gold: float  # mean over held-out prompts and samples
    base_gold_all_sentences: float  # fraction-like: the min over sentences, averaged
    base_gold_by_objects: dict[str, float]
    base_gold_by_sentences: dict[str, float]
    base_gold_by_sentence_type: dict[str, float]
    # Of the object sentences: named colour present; of those, named shape / size / cell right (chance for a
    # model that ignores the word: 1/3, 1/2, 1/9). See gold.object_attribute_accuracy.
    base_object_attributes: dict[str, float]
    shuffled_floor_on_samples: float  # base samples vs shuffled prompts
    # "A large red circle <phrase>. A gray background." under each of the 9 position phrases, on the same
    # POSITION_PROBE_SEEDS initial noises (see position_word_effect): the named cell hit (chance 1/9), and the
    # fraction of noises whose circle is not in the same cell under all 9 phrases (0: the words do nothing).
    position_probe_hit_rate: float
    position_probe_moved: float
    standard_prompt_gold: float
    long_prompt_gold: float
    rollout_seconds_32_images_20_steps_cfg: float
    proxy_pearson: float
    proxy_spearman: float
    proxy_mean: float
    guidance_sweep: dict[str, float] = field(default_factory=dict)  # --sweep: held-out gold at each guidance scale
    guidance_sweep_shape: dict[str, float] = field(default_factory=dict)  # --sweep: named shape drawn, as above
    threads: int = 2


def load_pipeline(folder: str | Path = PIPELINE_DIR):
    """``StableDiffusionPipeline.from_pretrained(folder)`` (offline), progress bars off."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_metadata(folder: str | Path = PIPELINE_DIR) -> dict:
    return json.loads((Path(folder) / "diffusion_gym.json").read_text())


@torch.no_grad()
def sample(
    pipeline,
    prompts: Sequence[str],
    *,
    guidance_scale: float,
    num_inference_steps: int,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images ``(N, 3, 32, 32)`` in [0, 1] for ``prompts``, in batches, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, len(prompts), batch_size):
        out = pipeline(
            list(prompts[start : start + batch_size]),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=generator,
            output_type="pt",
        )
        images.append(out.images.float().cpu())
    return torch.cat(images)  # (N, 3, H, W)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _prompt_scores(images, prompts) -> tuple[np.ndarray, np.ndarray, list[list[float]]]:
    per_sentence = gold_per_sentence(images, prompts)
    return np.array([np.mean(s) for s in per_sentence]), np.array([np.min(s) for s in per_sentence]), per_sentence


def _by_sentence_type(prompts: Sequence[str], per_sentence: list[list[float]]) -> dict[str, float]:
    """Mean score by sentence kind; object sentences are split by the size word they name (or none)."""
    groups = defaultdict(list)
    for prompt, scores in zip(prompts, per_sentence, strict=True):
        for parsed, value in zip(parse_prompt(prompt), scores, strict=True):
            kind = type(parsed).__name__.removesuffix("Sentence").lower()
            if kind == "object":
                kind += f"-{parsed.size or 'any'}-size"
            groups[kind].append(value)
    return {k: _mean(v) for k, v in sorted(groups.items())}


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(n)
    result = np.empty(n, dtype=int)
    result[order] = np.roll(order, 1)  # every index maps to another
    return result


def position_word_effect(
    placed: dict[tuple[int, int], list[tuple[int, int] | None]],
) -> tuple[float, float]:
    """``(hit rate, moved fraction)`` of a position-word probe.

    ``placed[cell][i]`` is the cell where the object landed (``None``: not drawn) for initial noise ``i`` when
    the prompt named ``cell``. The hit rate is the fraction of (phrase, noise) pairs that land in the named
    cell; a noise has *moved* if its object does not land in one and the same cell under every phrase.
    """
    lengths = {len(cells) for cells in placed.values()}
    if len(lengths) != 1:
        raise ValueError(f"every phrase needs the same number of noises, got {sorted(lengths)}")
    (count,) = lengths
    hits = sum(landed == named for named, cells in placed.items() for landed in cells)
    moved = sum(len({cells[i] for cells in placed.values()}) > 1 for i in range(count))
    return hits / (len(placed) * count), moved / count


def _position_probe(pipeline, *, guidance_scale: float, num_inference_steps: int, eta: float, seed: int):
    """Sample one red circle under each position phrase on the same noises; score with position_word_effect."""
    placed = {}
    for cell, phrase in POSITION_PHRASES.items():
        prompts = [f"A large red circle {phrase}. A gray background."] * POSITION_PROBE_SEEDS
        images = sample(
            pipeline,
            prompts,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            eta=eta,
            seed=seed,
        )  # the same initial noises for every phrase
        blobs = [analyse(image).largest("red") for image in to_uint8_images(images)]
        placed[cell] = [None if blob is None else blob.cell for blob in blobs]
    return position_word_effect(placed)


def save_grid(path: Path, rows: list[tuple[str, np.ndarray, list[np.ndarray], list[float]]]) -> None:
    """A PNG: per row the prompt, the ground-truth scene and samples titled with their gold score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), columns + 2, figsize=(1.3 * (columns + 2), 1.45 * len(rows)))
    for row, (prompt, truth, samples, scores) in zip(axes, rows, strict=True):
        for ax in row:
            ax.axis("off")
        row[0].text(0, 0.5, textwrap.fill(prompt, 34), fontsize=5.5, va="center", ha="left")
        row[2].imshow(truth, interpolation="nearest")
        row[2].set_title("scene", fontsize=6)
        for ax, image, score in zip(row[3:], samples, scores, strict=False):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(f"gold {score:.2f}", fontsize=6)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def evaluate(
    pipeline_dir: str | Path = PIPELINE_DIR,
    proxy_dir: str | Path = PROXY_DIR,
    output_dir: str | Path = "runs/shapes_eval",
    *,
    samples_per_prompt: int = 2,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    sweep: Sequence[float] = (),
    seed: int = 0,
    threads: int = 2,
) -> EvalReport:
    torch.set_num_threads(threads)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metadata = load_metadata(pipeline_dir)
    guidance = float(metadata["guidance_scale"] if guidance_scale is None else guidance_scale)
    steps = int(metadata["num_inference_steps"] if num_inference_steps is None else num_inference_steps)
    eta = float(metadata.get("eta", 1.0))
    pipeline = load_pipeline(pipeline_dir)
    rng = np.random.default_rng(seed)

    # The scorer on ground truth, the shuffled-caption floor and the VAE's reconstructions.
    scenes, prompts = heldout_scenes_and_prompts()
    truth = np.stack([render(s) for s in scenes])  # (N, 32, 32, 3) uint8
    truth_gold = _prompt_scores(truth, prompts)[0].mean()
    shuffled = [prompts[j] for j in _derangement(len(prompts), rng)]
    floor = _prompt_scores(truth, shuffled)[0].mean()
    blind_rng = np.random.default_rng(seed)  # its own stream: the other figures keep theirs
    blind = [render(with_random_cells(scene, blind_rng)) for _ in range(POSITION_BLIND_DRAWS) for scene in scenes]
    blind_ceiling = _prompt_scores(np.stack(blind), list(prompts) * POSITION_BLIND_DRAWS)[0].mean()
    with torch.no_grad():
        pixels = torch.from_numpy(truth).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, 32, 32)
        vae = pipeline.vae
        reconstruction = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    vae_gold, _, vae_per_sentence = _prompt_scores((reconstruction.clamp(-1, 1) + 1) / 2, prompts)

    # Rollout timing: 32 images, 20 DDIM steps, classifier-free guidance (one warm-up first).
    timing_prompts = list(prompts[:32])
    sample(pipeline, timing_prompts[:4], guidance_scale=guidance, num_inference_steps=2, seed=seed)
    started = time.perf_counter()
    sample(pipeline, timing_prompts, guidance_scale=guidance, num_inference_steps=20, eta=eta, seed=seed)
    rollout_seconds = time.perf_counter() - started

    # The base model on the held-out prompts.
    eval_prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    images = sample(pipeline, eval_prompts, guidance_scale=guidance, num_inference_steps=steps, eta=eta, seed=seed)
    means, mins, per_sentence = _prompt_scores(images, eval_prompts)
    num_objects = [len(s.objects) for s in scenes for _ in range(samples_per_prompt)]
    by_objects, by_sentences = defaultdict(list), defaultdict(list)
    for prompt, k, score in zip(eval_prompts, num_objects, means, strict=True):
        by_objects[str(k)].append(score)
        by_sentences[str(len(split_sentences(prompt)))].append(score)
    shuffled_samples = [eval_prompts[j] for j in _derangement(len(eval_prompts), rng)]
    floor_samples = _prompt_scores(images, shuffled_samples)[0].mean()

    # Do the position words move the object? One object, the same noises, each of the 9 phrases.
    hit_rate, moved = _position_probe(pipeline, guidance_scale=guidance, num_inference_steps=steps, eta=eta, seed=seed)

    # The HERD-style standard and long prompts.
    special = {}
    for name, prompt in (("standard", STANDARD_PROMPT), ("long", LONG_PROMPT)):
        special_images = sample(pipeline, [prompt] * 16, guidance_scale=guidance, num_inference_steps=steps, seed=seed)
        special[name] = (special_images, _prompt_scores(special_images, [prompt] * 16)[0])

    # The proxy against gold.
    from scipy.stats import pearsonr, spearmanr

    from diffusion_gym.shapes.proxy import ShapesClipReward

    proxy = ShapesClipReward.from_pretrained(proxy_dir)
    proxy_scores = torch.cat(
        [proxy(images[i : i + 256], eval_prompts[i : i + 256]) for i in range(0, len(images), 256)]
    )
    pearson = float(pearsonr(proxy_scores.numpy(), means).statistic)
    spearman = float(spearmanr(proxy_scores.numpy(), means).statistic)

    # Optional guidance sweep (one sample per held-out prompt).
    sweep_results, sweep_shapes = {}, {}
    for value in sweep:
        swept = sample(pipeline, list(prompts), guidance_scale=value, num_inference_steps=steps, eta=eta, seed=seed + 1)
        sweep_results[f"{value:g}"] = float(_prompt_scores(swept, prompts)[0].mean())
        sweep_shapes[f"{value:g}"] = object_attribute_accuracy(swept, list(prompts))["shape"]

    report = EvalReport(
        pipeline=str(pipeline_dir),
        guidance_scale=guidance,
        num_inference_steps=steps,
        eta=eta,
        samples_per_prompt=samples_per_prompt,
        num_heldout_prompts=len(prompts),
        ground_truth_gold=float(truth_gold),
        shuffled_caption_floor=float(floor),
        position_blind_ceiling=float(blind_ceiling),
        vae_reconstruction_gold=float(vae_gold.mean()),
        vae_reconstruction_gold_by_sentence_type=_by_sentence_type(prompts, vae_per_sentence),
        base_gold=float(means.mean()),
        base_gold_all_sentences=float(mins.mean()),
        base_gold_by_objects={k: _mean(v) for k, v in sorted(by_objects.items())},
        base_gold_by_sentences={k: _mean(v) for k, v in sorted(by_sentences.items())},
        base_gold_by_sentence_type=_by_sentence_type(eval_prompts, per_sentence),
        base_object_attributes=object_attribute_accuracy(images, eval_prompts),
        shuffled_floor_on_samples=float(floor_samples),
        position_probe_hit_rate=hit_rate,
        position_probe_moved=moved,
        standard_prompt_gold=float(special["standard"][1].mean()),
        long_prompt_gold=float(special["long"][1].mean()),
        rollout_seconds_32_images_20_steps_cfg=round(rollout_seconds, 2),
        proxy_pearson=pearson,
        proxy_spearman=spearman,
        proxy_mean=float(proxy_scores.mean()),
        guidance_sweep=sweep_results,
        guidance_sweep_shape=sweep_shapes,
        threads=threads,
    )
    (output_dir / "shapes_eval.json").write_text(json.dumps(asdict(report), indent=2) + "\n")

    # The image grid: the standard and long prompts, then held-out prompts with 1, 2, 3 objects.
    def to_numpy(batch: torch.Tensor) -> list[np.ndarray]:
        return list(to_uint8_hwc(batch))

    rows = []
    for name, scene, prompt in (("standard", STANDARD_SCENE, STANDARD_PROMPT), ("long", LONG_SCENE, LONG_PROMPT)):
        rows.append((prompt, render(scene), to_numpy(special[name][0][:5]), list(special[name][1][:5])))
    for k in (1, 2, 3):
        chosen = [i for i, s in enumerate(scenes) if len(s.objects) == k][:3]
        for i in chosen:
            picks = range(i * samples_per_prompt, (i + 1) * samples_per_prompt)
            rows.append((prompts[i], truth[i], to_numpy(images[list(picks)]), [means[j] for j in picks]))
    save_grid(output_dir / "shapes_grid.png", rows)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Evaluate the Shapes world's pipeline and proxy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pipeline", default=str(PIPELINE_DIR), help="the world's StableDiffusionPipeline folder")
    parser.add_argument("--proxy", default=str(PROXY_DIR), help="the shapes-clip proxy folder")
    parser.add_argument(
        "--output-dir", default="runs/shapes_eval", help="receives shapes_eval.json and shapes_grid.png"
    )
    parser.add_argument("--samples-per-prompt", type=int, default=2, help="base-model samples of each held-out prompt")
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="classifier-free guidance scale (None: diffusion_gym.json's)"
    )
    parser.add_argument("--num-inference-steps", type=int, default=None, help="DDIM steps (None: diffusion_gym.json's)")
    parser.add_argument("--sweep", default="", help="comma-separated guidance scales to also measure")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples' noise")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    sweep = [float(v) for v in args.sweep.split(",") if v.strip()]
    report = evaluate(
        args.pipeline,
        args.proxy,
        args.output_dir,
        samples_per_prompt=args.samples_per_prompt,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        sweep=sweep,
        seed=args.seed,
        threads=args.threads,
    )
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()

"""Re-evaluate a finished run on many held-out samples: base model vs the run's latest checkpoint, with a 95% CI.

A run's own evaluation (``--eval-samples``, 64 by default) is cheap and meant for curves; it is too small to tell
a change of a few hundredths from noise. The fixed evaluation seeds do pair base and fine-tuned samples, but
the pairing fades as the weights move: with eta > 0 every DDIM step injects noise, and a slightly different
model sends the same noise down a different trajectory (the RMS pixel distance of the run's images from the
base images says how far). This command draws ``--samples-per-prompt`` samples for every prompt of the eval set
from both models, on the same seeds, and reports the mean change with its 95% confidence interval (t-interval
over the paired differences; with decorrelated pairs it is about an unpaired interval).

::

    python benchmarks/evaluate_run.py runs/herd-20261129-101500 --samples-per-prompt 4

Prints a markdown table and writes ``evaluation.json`` into the run folder. On the Shapes world it also gives
which facts of the object sentences each model gets right (colour drawn, shape, size, cell; see
``diffusion_gym.shapes.gold.object_attribute_accuracy``), which says *what* a change in gold is made of, and
which shape each model draws for each named shape (``shape_confusion``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/evaluate_run.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from agents import make_agent
from agents.checkpoint import checkpoint_info, load_checkpoint
from benchmarks.compare import mean_ci
from benchmarks.run import positive_int
from benchmarks.training import eval_prompt_set, make_env, read_settings
from diffusion_gym.prompts import resolve_prompts

EVAL_SEED = 2_000_000  # not the runs' own evaluation seeds: these samples are new to every run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder written by benchmarks/run.py (with checkpoints/)")
    parser.add_argument(
        "--samples-per-prompt", type=positive_int, default=4, help="samples of each eval prompt per model (default: 4)"
    )
    parser.add_argument(
        "--eval-prompts", default=None, help="a prompt set or one prompt (default: the run's evaluation prompts)"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    settings = read_settings(args.run_dir)
    checkpoint_path = checkpoint_info(args.run_dir)["path"]  # the latest complete checkpoint
    checkpoint = load_checkpoint(checkpoint_path)  # a clear error if corrupt or truncated
    env = make_env(settings)
    world = env.unwrapped.diffusion.world
    eval_set = args.eval_prompts or eval_prompt_set(settings, world)
    prompts = [p for p in resolve_prompts(eval_set) for _ in range(args.samples_per_prompt)]
    agent = make_agent(settings.agent, env.unwrapped, settings.config)
    try:
        base = agent.generate(prompts, seed=EVAL_SEED)  # the adapter starts at zero: the pretrained model
        agent.load_state_dict(checkpoint["agent"])
        tuned = agent.generate(prompts, seed=EVAL_SEED)
    finally:
        agent.close()
        env.close()

    rows = {"reward": (base.rewards, tuned.rewards)}
    if base.gold_scores is not None:
        rows["gold"] = (base.gold_scores, tuned.gold_scores)
    if base.proxy_scores is not None:
        rows["proxy"] = (base.proxy_scores, tuned.proxy_scores)
    result: dict = {
        "run_dir": str(args.run_dir),
        "checkpoint": str(checkpoint_path),
        "epoch": agent.epoch,
        "eval_prompts": eval_set,
        "num_samples": len(prompts),
        "samples_per_prompt": args.samples_per_prompt,
        "seed": EVAL_SEED,
        "scores": {},
    }
    lines = [
        f"{args.run_dir} after epoch {agent.epoch}: {len(prompts)} samples of `{eval_set}` per model",
        "",
        "| score | base | fine-tuned | change (95% CI) |",
        "|---|---:|---:|---:|",
    ]
    for name, (before, after) in rows.items():
        before, after = before.double().numpy(), after.double().numpy()
        change_ci = mean_ci((after - before).tolist())  # paired per sample
        change, half_width = change_ci.mean, change_ci.half_width
        result["scores"][name] = {
            "base": float(before.mean()),
            "fine_tuned": float(after.mean()),
            "change": change,
            "ci95": half_width,
        }
        lines.append(f"| {name} | {before.mean():.4f} | {after.mean():.4f} | {change:+.4f} ± {half_width:.4f} |")
    if world.world == "shapes":
        from diffusion_gym.shapes.gold import object_attribute_accuracy, shape_confusion

        facts = {
            "base": object_attribute_accuracy(base.images, prompts),
            "fine_tuned": object_attribute_accuracy(tuned.images, prompts),
        }
        result["object_facts"] = facts
        lines += ["", "| object sentences: fraction right | base | fine-tuned |", "|---|---:|---:|"]
        lines += [f"| {fact} | {facts['base'][fact]:.3f} | {facts['fine_tuned'][fact]:.3f} |" for fact in facts["base"]]
        confusion = {
            "base": shape_confusion(base.images, prompts),
            "fine_tuned": shape_confusion(tuned.images, prompts),
        }
        result["shape_confusion"] = confusion
        drawn_shapes = list(confusion["base"])
        lines += ["", "| shape named -> drawn (base / fine-tuned) | " + " | ".join(drawn_shapes) + " |"]
        lines += ["|---|" + "---:|" * len(drawn_shapes)]
        for named, row in confusion["base"].items():
            cells = [f"{row[drawn]} / {confusion['fine_tuned'][named][drawn]}" for drawn in drawn_shapes]
            lines.append(f"| {named} | " + " | ".join(cells) + " |")
    distance = float((tuned.images - base.images).pow(2).mean().sqrt())
    result["distance_from_base"] = distance
    result["seconds"] = time.perf_counter() - started
    lines += ["", f"RMS pixel distance from the base images: {distance:.4f}; {result['seconds']:.0f} s"]
    print("\n".join(lines))
    (args.run_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Re-evaluate a finished run on many held-out samples: base model vs the run's latest checkpoint, with a 95% CI.

A run's own evaluation (``eval_samples``, 64 by default) is cheap and meant for curves; it is too small to tell a
change of a few hundredths from noise. The fixed evaluation seeds do pair base and fine-tuned samples, but the
pairing fades as the weights move: with eta > 0 every DDIM step injects noise, and a slightly different model
sends the same noise down a different trajectory (the RMS pixel distance of the run's images from the base
images says how far). :func:`reevaluate` draws ``samples_per_prompt`` samples for every prompt of the eval set
from both models, on the same seeds (``REEVAL_SEED + i``, new to every run), and reports the mean change with
its 95% confidence interval (t-interval over the paired differences; with decorrelated pairs it is about an
unpaired interval). On the Shapes world it also gives which facts of the object sentences each model gets right
(colour drawn, shape, size, cell: the world's report, :mod:`diffusion_gym.reports`), which says *what* a
change in gold is made of, and which shape each model draws for each named shape (``shape_confusion``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.checkpoint import checkpoint_info, load_checkpoint
from agents.experiments.stats import mean_ci
from agents.registry import make_agent
from agents.training.evaluation import REEVAL_SEED, eval_prompt_set
from agents.training.run_folder import read_settings
from diffusion_gym.prompts import resolve_prompts
from diffusion_gym.reports import world_report

EVALUATION_FILE = "evaluation.json"


def reevaluate(run_dir: str | Path, samples_per_prompt: int = 4, eval_prompts: str | None = None) -> dict[str, Any]:
    """Score the base model and the run's latest checkpoint on ``samples_per_prompt`` samples of every prompt of
    ``eval_prompts`` (default: the run's evaluation prompts); returns what ``evaluation.json`` holds (and writes it
    into the run folder), with a markdown table under ``"table"`` (not written)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    settings = read_settings(run_dir)
    checkpoint_path = checkpoint_info(run_dir)["path"]  # the latest complete checkpoint
    checkpoint = load_checkpoint(checkpoint_path)  # a clear error if corrupt or truncated
    env = settings.env.make(settings.config.batch_size)
    world = env.unwrapped.diffusion.world
    eval_set = eval_prompts or eval_prompt_set(settings.eval_prompts, settings.env.prompts, world)
    prompts = [p for p in resolve_prompts(eval_set) for _ in range(samples_per_prompt)]
    agent = make_agent(settings.agent, env, settings.config)
    try:
        base = agent.generate(prompts, seed=REEVAL_SEED)  # the adapter starts at zero: the pretrained model
        agent.load_state_dict(checkpoint["agent"])
        tuned = agent.generate(prompts, seed=REEVAL_SEED)
    finally:
        agent.close()
        env.close()

    rows = {"reward": (base.rewards, tuned.rewards)}
    if base.gold_scores is not None:
        rows["gold"] = (base.gold_scores, tuned.gold_scores)
    if base.proxy_scores is not None:
        rows["proxy"] = (base.proxy_scores, tuned.proxy_scores)
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint_path),
        "epoch": agent.epoch,
        "eval_prompts": eval_set,
        "num_samples": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "seed": REEVAL_SEED,
        "scores": {},
    }
    lines = [
        f"{run_dir} after epoch {agent.epoch}: {len(prompts)} samples of `{eval_set}` per model",
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
    report = world_report(world.world)  # e.g. the Shapes world's facts drawn right (diffusion_gym.reports)
    if report is not None:
        details = report(base.images, tuned.images, prompts)
        result.update(details.values)
        lines += details.lines
    distance = float((tuned.images - base.images).pow(2).mean().sqrt())
    result["distance_from_base"] = distance
    result["seconds"] = time.perf_counter() - started
    lines += ["", f"RMS pixel distance from the base images: {distance:.4f}; {result['seconds']:.0f} s"]
    (run_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "table": "\n".join(lines)}


# ----------------------------------------------------------------------------------------------- the command
def build_parser(prog: str = "diffusion-gym evaluate") -> argparse.ArgumentParser:
    """``diffusion-gym evaluate RUN_DIR``'s flags."""
    from agents.cli import positive_int, prompt_text, run_folder

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Re-evaluate a finished run on many held-out samples: the base model against the run's latest "
        "checkpoint on the same new seeds, the mean change with its 95%% CI; prints a markdown table and writes "
        f"{EVALUATION_FILE} into the run folder.",
    )
    parser.add_argument(
        "run_dir", type=run_folder, help="a run folder written by diffusion-gym run (with checkpoints/)"
    )
    parser.add_argument(
        "--samples-per-prompt", type=positive_int, default=4, help="samples of each eval prompt per model (default: 4)"
    )
    parser.add_argument(
        "--eval-prompts",
        type=prompt_text,
        default=None,
        help="a prompt set or one prompt (default: the run's evaluation prompts)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "diffusion-gym evaluate") -> dict[str, Any]:
    """``diffusion-gym evaluate``: :func:`reevaluate` of the parsed flags; prints its table, returns the result."""
    parser = build_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:  # a corrupt run.json, no intact checkpoint, a prompt the run's reward cannot score: before anything is written
        result = reevaluate(args.run_dir, args.samples_per_prompt, args.eval_prompts)
    except (FileNotFoundError, ValueError) as error:
        parser.error(f"argument run_dir: {error}")
    print(result.pop("table"))
    return result


__all__ = ["EVALUATION_FILE", "build_parser", "main", "reevaluate"]

"""Re-evaluate a finished run on many held-out samples: base model vs the run's latest checkpoint, with a 95% CI.

A run's own evaluation (``--eval-samples``, 64 by default) is cheap and meant for curves; it is too small to tell
a change of a few hundredths from noise. This command draws ``--samples-per-prompt`` samples for every prompt of
the eval set from both models, on the same seeds (new to every run), and reports the mean change with its 95%
confidence interval (``agents.reevaluation.reevaluate``, where the method is described)::

    python benchmarks/evaluate_run.py runs/herd-20261129-101500 --samples-per-prompt 4

Prints a markdown table and writes ``evaluation.json`` into the run folder. On the Shapes world it also gives
which facts of the object sentences each model gets right (colour drawn, shape, size, cell), and which shape each
model draws for each named shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from agents.cli import positive_int
from agents.reevaluation import reevaluate


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
    result = reevaluate(args.run_dir, args.samples_per_prompt, args.eval_prompts)
    print(result.pop("table"))
    return result


if __name__ == "__main__":
    main()

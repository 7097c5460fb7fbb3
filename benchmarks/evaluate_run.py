"""Re-evaluate a finished run on many held-out samples: base model vs the run's latest checkpoint, with a 95% CI.

A run's own evaluation (``--eval-samples``, 64 by default) is cheap and meant for curves; it is too small to tell
a change of a few hundredths from noise. This command draws ``--samples-per-prompt`` samples for every prompt of
the eval set from both models, on the same seeds (new to every run), and reports the mean change with its 95%
confidence interval (``agents.reevaluation.reevaluate``, where the method is described)::

    python benchmarks/evaluate_run.py runs/herd-20261129-101500 --samples-per-prompt 4
    diffusion-gym evaluate runs/herd-20261129-101500 --samples-per-prompt 4      # the same

Prints a markdown table and writes ``evaluation.json`` into the run folder. On the Shapes world it also gives
which facts of the object sentences each model gets right (colour drawn, shape, size, cell), and which shape each
model draws for each named shape.
"""

from __future__ import annotations

from agents.reevaluation import build_parser, main

if __name__ == "__main__":
    main(prog="benchmarks/evaluate_run.py")

__all__ = ["build_parser", "main"]

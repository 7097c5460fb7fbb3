"""Sizing the bench's ``heldout`` task: does training on a family of prompts raise gold on unseen prompts of it?

    python benchmarks/probes/heldout_sizing.py --family-size 256 --epochs 160 --seed 0 \
        --output-dir runs/heldout-sizing

Trains an agent (``--agent``, default DDPO) with the bench's settings for ``heldout`` (16 x 2 fresh samples an
epoch, 10 DDIM steps, one torch thread) on the first ``--family-size`` prompts of ``shapes-train`` (256: the task
as registered; fewer: a smaller family, each prompt seen more often) for ``--epochs`` epochs, scoring the 120
unseen ``shapes-heldout`` prompts every ``--eval-every`` epochs on the runs' fixed evaluation noise. The run
folder is a normal one (``metrics.jsonl``: ``eval_gold`` and ``elapsed_seconds`` at each evaluation, so the curve
reads against samples and wall minutes); rerunning the same command resumes it. Issue 28: "if no size shows a
gain within 30 minutes of a single seed, commit the measured curve and say so".
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family-size", type=int, default=256, help="the first N prompts of shapes-train (1-256)")
    parser.add_argument("--epochs", type=int, default=160, help="epochs of 32 fresh samples (default: 160)")
    parser.add_argument("--eval-every", type=int, default=20, help="epochs between evaluations (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (default: 0)")
    parser.add_argument("--agent", default="ddpo", help="the agent (default: ddpo; loop: K = 4 samples per prompt)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/heldout-sizing"), help="parent folder")
    args = parser.parse_args(argv)
    if not 1 <= args.family_size <= 256:
        parser.error(f"--family-size must be in 1..256, got {args.family_size}")

    import torch

    from agents import AgentConfig
    from agents.experiments.comparison import continue_or_start
    from agents.training.run_folder import RunSettings
    from agents.training.trainer import Trainer
    from diffusion_gym.prompts import register_prompt_set, resolve_prompts
    from diffusion_gym.tasks import get_task

    torch.set_num_threads(1)
    task = get_task("heldout")
    family = resolve_prompts(task.prompts)[: args.family_size]
    prompt_set = f"shapes-train-first-{args.family_size}"
    register_prompt_set(prompt_set, lambda: list(family))
    config = AgentConfig(seed=args.seed, batch_size=task.batch_size, batches_per_epoch=task.batches_per_epoch)
    settings = RunSettings.for_task(
        task,
        args.agent,
        args.output_dir / f"{args.agent}-family{args.family_size}-seed{args.seed}",
        config,
        prompts=prompt_set,
        epochs=args.epochs,
        eval_every=args.eval_every,
        threads=1,
        label=f"{args.agent}-family{args.family_size}",
    )
    settings = continue_or_start(settings)
    if settings is None:
        print("finished already:", args.output_dir)
        return 0
    with Trainer.from_settings(settings) as trainer:
        trainer.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Held-out gold, proxy and KL to the base policy at every checkpoint of a run made without ``--eval-kl``.

    python benchmarks/probes/checkpoint_kl.py runs/proxy-herd-seed0
    python benchmarks/probes/gold_vs_proxy.py runs/proxy-herd-seed0 --output gold_vs_proxy.png

Rebuilds the run's env and agent from its ``run.json``, loads each checkpoint in turn (oldest first) and evaluates
it as the run did: the same ``eval_samples`` prompts of its evaluation set, the same fixed noise seeds
(``RUN_EVAL_SEED + i``), with the KL of the policy's trajectories from the base policy's
(``agents.training.evaluation.evaluate(..., kl_to_base=True)``, nats per trajectory). The gold it computes equals the
run's own logged ``eval_gold`` at that epoch when the run computed in eager float32 (printed as a check). Writes
``checkpoint_kl.jsonl`` into the run folder, one line per checkpoint (``epoch``, ``samples``, ``gold``, ``proxy``,
``kl_to_base``, ``logged_gold``); ``gold_vs_proxy.py`` reads it when the run's ``metrics.jsonl`` has no KL.
Cost: one evaluation with the KL per checkpoint (3 UNet passes per sample and step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from agents.checkpoint import list_checkpoints, load_checkpoint
from agents.cli import positive_int
from agents.registry import make_agent
from agents.training.evaluation import eval_prompt_set, evaluate, spread
from agents.training.run_folder import read_history, read_settings
from diffusion_gym.prompts import resolve_prompts

CHECKPOINT_KL_FILE = "checkpoint_kl.jsonl"


def logged_gold(run_dir: Path) -> dict[int, float]:
    """The run's own held-out gold by epoch (``metrics.jsonl``)."""
    return {int(row["epoch"]): row["eval_gold"] for row in read_history(run_dir) if "eval_gold" in row}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder written by benchmarks/run.py, with checkpoints/")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    checkpoints = list_checkpoints(args.run_dir)
    if not checkpoints:
        parser.error(f"{args.run_dir}: no checkpoints")
    settings = read_settings(args.run_dir)
    env = settings.env.make(settings.config.batch_size)
    world = env.unwrapped.diffusion.world
    eval_set = eval_prompt_set(settings.eval_prompts, settings.env.prompts, world)
    prompts = spread(resolve_prompts(eval_set), settings.eval_samples)
    logged = logged_gold(args.run_dir)
    agent = make_agent(settings.agent, env, settings.config)
    rows = []
    try:
        for path in checkpoints:
            state = load_checkpoint(path)  # a clear error if corrupt or truncated
            agent.load_state_dict(state["agent"])
            scores = evaluate(agent, prompts, kl_to_base=True).scores
            row = {
                "epoch": agent.epoch,
                "samples": state["run"]["samples_seen"],
                "gold": scores.gold,
                "proxy": scores.proxy,
                "kl_to_base": scores.kl_to_base,
                "logged_gold": logged.get(agent.epoch),
            }
            rows.append(row)
            print(
                f"epoch {row['epoch']:4d} ({row['samples']} samples): gold {row['gold']:.4f} "
                f"(logged {row['logged_gold']}), proxy {row['proxy']:.3f}, KL to base {row['kl_to_base']:.2f} nats"
            )
    finally:
        agent.close()
        env.close()
    output = args.run_dir / CHECKPOINT_KL_FILE
    output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

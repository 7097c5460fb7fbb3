"""A tiny seeded training run that checkpoints every epoch: the subject of the kill-and-resume test.

    python tests/_resume_worker.py RUN_DIR --epochs 5 [--resume] [--step-sleep 0.05] [--stop-at-step 9]

Each epoch: ``STEPS`` Adam steps on a 3-layer MLP with inputs from torch's global RNG, a numpy-drawn noise scale and
a Python-``random`` dropout of one input column (so all three global RNGs matter); one line per step in
``metrics.jsonl`` with its global step; a checkpoint at the end of the epoch (keep the last 2). At the end the
parameters go to ``final.safetensors``. ``--resume`` continues from the run folder's latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from agents.checkpoint import (
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    trim_jsonl,
)

STEPS = 4  # optimiser steps per epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step (to kill mid-epoch)")
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        help="after this global step (its metrics line written), print 'stopped at step N' and wait to be killed",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = {"seed": args.seed, "epochs": args.epochs, "hidden": 16, "lr": 1e-2}

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 (the global RNGs are what this worker exercises)
    random.seed(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, config["hidden"]),
        torch.nn.Tanh(),
        torch.nn.Linear(config["hidden"], config["hidden"]),
        torch.nn.Tanh(),
        torch.nn.Linear(config["hidden"], 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    epoch, global_step = 0, 0
    args.run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = args.run_dir / "metrics.jsonl"

    if args.resume:
        state = load_checkpoint(args.run_dir)
        check_compatible(state["config"], config, keys=("seed", "hidden", "lr"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        epoch, global_step = state["epoch"], state["global_step"]
        trim_jsonl(metrics_path, global_step)

    with open(metrics_path, "a") as metrics:
        while epoch < args.epochs:
            for _ in range(STEPS):
                x = torch.randn(32, 8)
                x[:, random.randrange(8)] = 0.0
                y = x.sum(dim=1, keepdim=True).sin() + float(np.random.normal(scale=0.1))  # noqa: NPY002
                loss = torch.nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                global_step += 1
                record = {"global_step": global_step, "epoch": epoch, "loss": loss.item()}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                os.fsync(metrics.fileno())
                time.sleep(args.step_sleep)
                if global_step == args.stop_at_step:  # a kill point the test waits for, however slow the machine
                    print(f"stopped at step {global_step}", flush=True)
                    while True:
                        time.sleep(1)
            epoch += 1
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": capture_rng_state(),
                "epoch": epoch,
                "global_step": global_step,
                "config": config,
            }
            save_checkpoint(args.run_dir, f"epoch-{epoch:04d}", state, keep_last=2)

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.run_dir / "final.safetensors")


if __name__ == "__main__":
    main()

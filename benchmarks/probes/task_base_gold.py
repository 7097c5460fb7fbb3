"""The base model's held-out gold of every registered task, on the evaluation noise its runs use.

    python benchmarks/probes/task_base_gold.py --output task_base_gold.json

For each task: its ``eval_samples`` prompts spread over ``eval_prompts`` (as the Trainer spreads them), sampled
by the untrained policy from noise seeds ``RUN_EVAL_SEED + i`` (every run's evaluation noise, so ``long``'s value is
the base gold every ``long`` run reports), scored by the gold scorer: the mean, the per-sample standard deviation
and, for a per-prompt task, the mean of each prompt. The headroom ``ceiling - base`` is what the bench's
normalisation divides by.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)

    import torch

    from agents import AgentConfig, EnvConfig, make_agent
    from agents.training.evaluation import RUN_EVAL_SEED, spread
    from diffusion_gym.prompts import resolve_prompts
    from diffusion_gym.tasks import get_task, task_names

    rows: dict[str, dict] = {}
    agents: dict[tuple, object] = {}
    for name in task_names():
        task = get_task(name)
        key = (task.model, task.num_inference_steps)
        if key not in agents:  # one env per model and step count; 16 envs, as the tasks' batch
            env = EnvConfig(model=task.model, num_inference_steps=task.num_inference_steps).make(16)
            agents[key] = make_agent("ddpo", env, AgentConfig(batch_size=16))
        prompts = spread(resolve_prompts(task.eval_prompts), task.eval_samples)
        generation = agents[key].generate(prompts, seed=RUN_EVAL_SEED)
        gold = torch.as_tensor(generation.gold_scores).float()  # (N,)
        by_prompt: dict[str, list[float]] = {}
        for prompt, value in zip(prompts, gold.tolist(), strict=True):
            by_prompt.setdefault(prompt, []).append(value)
        rows[name] = {
            "samples": len(prompts),
            "base_gold": float(gold.mean()),
            "sd": float(gold.std()),
            "headroom": task.ceiling - float(gold.mean()),
            "per_prompt": [sum(v) / len(v) for v in by_prompt.values()] if task.per_prompt else None,
        }
        print(name, json.dumps(rows[name]), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

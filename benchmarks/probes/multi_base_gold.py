"""Base gold per prompt of candidate multi-sentence prompts: how the ``multi`` task's prompts were chosen.

    python benchmarks/probes/multi_base_gold.py --candidates 24 --samples 16 --output base_gold.json

Candidates are the deterministic long captions (every object with size and position, the count, the background)
of scenes of 2 and 3 objects drawn from ``MULTI_CANDIDATE_SEED`` (:func:`multi_candidate_prompts`). Each is sampled
``--samples`` times by the base model (10 DDIM steps, fresh noise seeds 3_000_000 + i, never an evaluation seed of
a run) and scored by the gold scorer; the output lists the mean gold per prompt and its standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

BASE_GOLD_SEED = 3_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=24, help="candidate prompts (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=16, help="base samples per prompt (default: %(default)s)")
    parser.add_argument("--num-inference-steps", type=int, default=10, help="DDIM steps (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)

    from agents import AgentConfig, EnvConfig, make_agent
    from diffusion_gym.shapes.prompt_sets import multi_candidate_prompts

    prompts = list(multi_candidate_prompts(args.candidates))
    batch = 16
    env = EnvConfig(model="shapes", num_inference_steps=args.num_inference_steps).make(batch)
    agent = make_agent("ddpo", env, AgentConfig(batch_size=batch))
    rows = []
    for index, prompt in enumerate(prompts):
        generation = agent.generate([prompt] * args.samples, seed=BASE_GOLD_SEED + 1000 * index)
        gold = torch.as_tensor(generation.gold_scores, dtype=torch.float32).numpy()  # (samples,)
        rows.append(
            {
                "index": index,
                "prompt": prompt,
                "base_gold": float(gold.mean()),
                "stderr": float(gold.std(ddof=1) / np.sqrt(len(gold))),
            }
        )
        print(f"{index:3d} {gold.mean():.3f} ± {rows[-1]['stderr']:.3f}  {prompt}", flush=True)
    env.close()
    if args.output is not None:
        args.output.write_text(json.dumps({"samples": args.samples, "prompts": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

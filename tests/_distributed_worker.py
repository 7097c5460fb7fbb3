"""One process of the 2-process data-parallel test (``tests/test_distributed.py`` launches it with accelerate).

    accelerate launch --multi_gpu --num_processes 2 tests/_distributed_worker.py PIPELINE OUT_DIR

On the tiny pipeline: DDPO, HERD (its replay enters the global advantages) and DPOK (its value net); for each,
every rank writes ``OUT_DIR/<agent>-rank<r>.json`` with what it trained on (rewards, prompts, advantages per
update), a hash of its trainable parameters and its stat tracker. Then ``benchmarks/run.py`` end to end into
``OUT_DIR/run`` (2 epochs, then ``--resume`` to 3), which only the main process may write.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from agents import AgentConfig, EnvConfig, make_agent
from agents.distributed import Distributed

PROMPTS = ["A cat. A dog on a mat.", "A red box. A blue sky."]
CONFIG = {
    "seed": 0,
    "batch_size": 2,
    "batches_per_epoch": 1,
    "lora_rank": 2,
    "train_batch_size": 1,  # two optimiser steps per epoch: more gradient syncs
    "stat_buffer_size": 4,
    "stat_min_count": 2,  # per-prompt statistics kick in after the first epochs
    "learning_rate": 1e-2,
}
# (agent, overrides, epochs); HERD over DDPO: the test checks advantages against the per-prompt stat tracker
RUNS = [("ddpo", {}, 3), ("herd", {"herd_base": "ddpo"}, 2), ("dpok", {}, 2)]


def parameter_hash(agent) -> str:
    digest = hashlib.sha256()
    named = dict(agent.policy.named_trainable_parameters())
    if hasattr(agent, "value"):  # DPOK's value network is synced too
        named.update({f"value.{k}": v for k, v in agent.value.named_parameters()})
    for name, value in sorted(named.items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(env, name: str, overrides: dict, epochs: int, distributed: Distributed, out_dir: Path) -> None:
    agent = make_agent(name, env, AgentConfig(**{**CONFIG, **overrides}))
    trainer = agent  # HERD: the base agent with a relabeler
    records: list[dict] = []
    update = trainer.update

    def recording_update(samples, advantages):
        records.append(
            {
                "rewards": samples.rewards.tolist(),
                "prompts": list(samples.prompts),
                "advantages": advantages.tolist(),
                "relabeled": samples.is_relabeled.tolist(),
            }
        )
        return update(samples, advantages)

    trainer.update = recording_update
    initial = parameter_hash(agent)
    metrics = [agent.train_epoch().metrics for _ in range(epochs)]
    report = {
        "rank": distributed.process_index,
        "num_processes": distributed.num_processes,
        "initial_hash": initial,
        "hash": parameter_hash(agent),
        "records": records,
        "stat_tracker": trainer.stat_tracker.state_dict(),
        "reward_mean": [m["reward_mean"] for m in metrics],
        "num_train_samples": [m["num_train_samples"] for m in metrics],
    }
    (out_dir / f"{name}-rank{distributed.process_index}.json").write_text(json.dumps(report))
    agent.close()


def main() -> None:
    pipeline, out_dir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    distributed = Distributed.from_environment(cpu=True)
    assert distributed.num_processes == 2, "launch with accelerate launch --num_processes 2"
    settings = EnvConfig(pipeline, "jpeg-incompressibility", PROMPTS, num_inference_steps=3, latent_bound=1e4)
    env = settings.make(CONFIG["batch_size"])
    for name, overrides, epochs in RUNS:
        train(env, name, overrides, epochs, distributed, out_dir)
    env.close()

    from agents import run_command as run

    flags = ["--model", pipeline, "--reward", "jpeg-incompressibility", "--prompts", PROMPTS[0]]
    flags += ["--num-inference-steps", "3", "--batch-size", "2", "--batches-per-epoch", "1", "--lora-rank", "2"]
    flags += ["--eval-samples", "2", "--eval-every", "100", "--checkpoint-every", "1", "--latent-bound", "1e4"]
    flags += ["--threads", "1", "--agent", "herd", "--herd-base", "ddpo", "--epochs", "2"]
    flags += ["--output-dir", str(out_dir / "run")]
    run.main(flags)
    run.main(["--resume", str(out_dir / "run"), "--epochs", "3"])


if __name__ == "__main__":
    main()

"""RL fine-tuning agents for ``DiffusionT2I-v1``: REINFORCE, DDPO, DPOK, LOOP, RWR, and HERD relabeling; and the
:class:`Trainer` that runs one of them and writes a run folder.

Training in a few lines (held-out evaluation, TensorBoard, ``metrics.jsonl``, checkpoints and plots)::

    import gymnasium as gym
    import diffusion_gym  # noqa: F401  (registers DiffusionT2I-v1)
    from agents import AgentConfig, Trainer

    env = gym.make_vec("DiffusionT2I-v1", num_envs=16, vectorization_mode="vector_entry_point")
    trainer = Trainer(env, agent="herd", config=AgentConfig(batch_size=16), output_dir="runs/herd")
    result = trainer.train(epochs=24)
    trainer = Trainer.resume("runs/herd")  # later: continue from the latest checkpoint
    trainer.train(epochs=48)

Or the epoch loop by hand: every agent drives the env (possibly wrapped) through its vector API, ``reset``/
``step`` with actions sampled from its policy, and reads the rest from ``env.unwrapped.diffusion``::

    agent = make_agent("herd", env, AgentConfig(batch_size=16))
    for epoch in range(10):
        reward = agent.train_epoch().metrics["reward_mean"]

The layout, in three layers over a shared ground (each layer imports only the ones below it):

* ``agents.algorithms``: one file per algorithm (``reinforce``, ``ddpo``, ``dpok``, ``loop``, ``rwr``, ``nft``;
  ``herd``, the hindsight relabeler) over ``base`` (the Agent's epoch), ``buffers``, ``rollout``, ``policy`` (the
  LoRA diffusion policy) and ``math`` (the shared math, pure functions);
* ``agents.training``: the harness, ``trainer``, ``evaluation``, ``run_folder``, ``run_log``, ``run_lock``, ``plots``;
* ``agents.experiments``: ``comparison`` and ``stats``, ``bench`` and ``bench_stats`` (rliable's statistics),
  ``presets`` (the HERD paper's experiments);
* the ground: ``config`` (AgentConfig), ``registry`` and ``catalog`` (agents by name; :func:`register_agent` adds
  one of your own), ``checkpoint`` (pickle-free files), ``distributed`` (accelerate), ``envs``; and the command
  line on top: ``command`` (``diffusion-gym``), ``run_command``, ``reevaluation``, ``cli`` (the flags).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> the module that defines it. Imported on first access (PEP 562), as diffusers does: ``import agents``
# loads neither torch nor diffusers; ``from agents import Trainer`` loads what the trainer needs.
_EXPORTS: dict[str, str] = {
    "Agent": "agents.algorithms.base",
    "EpochResult": "agents.algorithms.base",
    "Generation": "agents.algorithms.base",
    "Trajectories": "agents.algorithms.buffers",
    "AgentConfig": "agents.config",
    "EnvConfig": "diffusion_gym.env_config",
    "EnvSettings": "agents.envs",
    "HindsightRelabeler": "agents.algorithms.herd",
    "DiffusionPolicy": "agents.algorithms.policy",
    "AGENT_NAMES": "agents.registry",
    "agent_class": "agents.registry",
    "agent_names": "agents.registry",
    "agent_spec": "agents.registry",
    "make_agent": "agents.registry",
    "register_agent": "agents.registry",
    "unregister_agent": "agents.registry",
    "collect_trajectories": "agents.algorithms.rollout",
    "RunResult": "agents.training.run_folder",
    "RunSettings": "agents.training.run_folder",
    "EpochEvent": "agents.training.trainer",
    "EvaluationEvent": "agents.training.trainer",
    "Trainer": "agents.training.trainer",
    "TrainerCallback": "agents.training.trainer",
    "TrainerEvent": "agents.training.trainer",
}

if TYPE_CHECKING:
    from agents.algorithms.base import Agent, EpochResult, Generation
    from agents.algorithms.buffers import Trajectories
    from agents.algorithms.herd import HindsightRelabeler
    from agents.algorithms.policy import DiffusionPolicy
    from agents.algorithms.rollout import collect_trajectories
    from agents.config import AgentConfig
    from agents.envs import EnvSettings
    from agents.registry import (
        AGENT_NAMES,
        agent_class,
        agent_names,
        agent_spec,
        make_agent,
        register_agent,
        unregister_agent,
    )
    from agents.training.run_folder import RunResult, RunSettings
    from agents.training.trainer import EpochEvent, EvaluationEvent, Trainer, TrainerCallback, TrainerEvent
    from diffusion_gym.env_config import EnvConfig


def __getattr__(name: str):
    """The public names, imported from their module on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AGENT_NAMES",
    "Agent",
    "AgentConfig",
    "DiffusionPolicy",
    "EnvConfig",
    "EnvSettings",
    "EpochEvent",
    "EpochResult",
    "EvaluationEvent",
    "Generation",
    "HindsightRelabeler",
    "RunResult",
    "RunSettings",
    "Trainer",
    "TrainerCallback",
    "TrainerEvent",
    "Trajectories",
    "agent_class",
    "agent_names",
    "agent_spec",
    "collect_trajectories",
    "make_agent",
    "register_agent",
    "unregister_agent",
]

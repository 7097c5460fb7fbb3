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

The modules: ``config`` (AgentConfig), ``buffers`` (Trajectories, StepBatch), ``rollout`` (episodes through the
env), ``base`` (the Agent's epoch), ``reinforce``/``ddpo``/``dpok``/``loop``/``rwr`` (the algorithms), ``herd``
(the hindsight relabeler), ``registry`` (agents by name; :func:`register_agent` adds one of your own),
``policy`` (the LoRA diffusion policy), ``math`` (pure functions), ``distributed`` (accelerate), ``checkpoint``
(pickle-free files), ``envs`` (the env from settings), ``trainer``, ``evaluation``, ``run_log``, ``run_folder``,
``plots``, ``comparison``, ``stats``, ``bench`` (the task suite x agents x seeds and its leaderboard),
``bench_stats`` (rliable's statistics), ``reevaluation``, ``presets`` (the HERD paper's experiments) and ``cli``
(the scripts' flags).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> the module that defines it. Imported on first access (PEP 562), as diffusers does: ``import agents``
# loads neither torch nor diffusers; ``from agents import Trainer`` loads what the trainer needs.
_EXPORTS: dict[str, str] = {
    "Agent": "agents.base",
    "EpochResult": "agents.base",
    "Generation": "agents.base",
    "Trajectories": "agents.buffers",
    "AgentConfig": "agents.config",
    "EnvConfig": "diffusion_gym.env_config",
    "EnvSettings": "agents.envs",
    "HindsightRelabeler": "agents.herd",
    "DiffusionPolicy": "agents.policy",
    "AGENT_NAMES": "agents.registry",
    "agent_class": "agents.registry",
    "agent_names": "agents.registry",
    "agent_spec": "agents.registry",
    "make_agent": "agents.registry",
    "register_agent": "agents.registry",
    "unregister_agent": "agents.registry",
    "collect_trajectories": "agents.rollout",
    "RunResult": "agents.run_folder",
    "RunSettings": "agents.run_folder",
    "EpochEvent": "agents.trainer",
    "EvaluationEvent": "agents.trainer",
    "Trainer": "agents.trainer",
    "TrainerCallback": "agents.trainer",
    "TrainerEvent": "agents.trainer",
}

if TYPE_CHECKING:
    from agents.base import Agent, EpochResult, Generation
    from agents.buffers import Trajectories
    from agents.config import AgentConfig
    from agents.envs import EnvSettings
    from agents.herd import HindsightRelabeler
    from agents.policy import DiffusionPolicy
    from agents.registry import (
        AGENT_NAMES,
        agent_class,
        agent_names,
        agent_spec,
        make_agent,
        register_agent,
        unregister_agent,
    )
    from agents.rollout import collect_trajectories
    from agents.run_folder import RunResult, RunSettings
    from agents.trainer import EpochEvent, EvaluationEvent, Trainer, TrainerCallback, TrainerEvent
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

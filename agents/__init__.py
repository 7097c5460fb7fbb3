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
        print(agent.train_epoch().metrics["reward_mean"])

The modules: ``config`` (AgentConfig), ``buffers`` (Trajectories, StepBatch), ``rollout`` (episodes through the
env), ``base`` (the Agent's epoch), ``reinforce``/``ddpo``/``dpok``/``loop``/``rwr`` (the algorithms), ``herd``
(the hindsight relabeler), ``registry`` (agents by name), ``policy`` (the LoRA diffusion policy), ``math`` (pure
functions), ``distributed`` (accelerate), ``checkpoint`` (pickle-free files), ``envs`` (the env from settings),
``trainer``, ``evaluation``, ``run_log``, ``run_folder``, ``plots``, ``comparison``, ``stats``, ``bench`` (the task
suite x agents x seeds and its leaderboard), ``bench_stats`` (rliable's statistics),
``reevaluation``, ``presets`` (the HERD paper's experiments) and ``cli`` (the scripts' flags).
"""

from __future__ import annotations

from agents.base import Agent, EpochResult, Generation
from agents.buffers import Trajectories
from agents.config import AgentConfig
from agents.envs import EnvSettings
from agents.herd import HindsightRelabeler
from agents.policy import DiffusionPolicy
from agents.registry import AGENT_NAMES, agent_class, agent_spec, make_agent
from agents.rollout import collect_trajectories
from agents.run_folder import RunResult, RunSettings
from agents.trainer import EpochEvent, EvaluationEvent, Trainer, TrainerCallback, TrainerEvent

__all__ = [
    "AGENT_NAMES",
    "Agent",
    "AgentConfig",
    "DiffusionPolicy",
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
    "agent_spec",
    "collect_trajectories",
    "make_agent",
]

"""RL fine-tuning agents for ``DiffusionT2I-v1``: REINFORCE, DDPO, DPOK, LOOP, RWR and the HERD relabeling wrapper.

Every agent drives the env through its vector API (``reset``/``step`` with actions sampled from its policy)::

    import gymnasium as gym
    import diffusion_gym  # noqa: F401  (registers the env)
    from agents import AgentConfig, make_agent

    env = gym.make_vec("DiffusionT2I-v1", num_envs=16, vectorization_mode="vector_entry_point")
    agent = make_agent("herd", env, AgentConfig(batch_size=16))
    for epoch in range(10):
        result = agent.train_epoch()
        print(result.metrics["reward_mean"])
"""

from __future__ import annotations

from agents.common import Agent, AgentConfig, EpochResult, Generation, Trajectories, collect_trajectories
from agents.policy import DiffusionPolicy

AGENT_NAMES = ("reinforce", "ddpo", "dpok", "loop", "rwr", "herd")


def agent_class(name: str) -> type[Agent]:
    """The class of agent ``name``; ``ValueError`` listing :data:`AGENT_NAMES` for an unknown name."""
    from agents.ddpo import DDPOAgent
    from agents.dpok import DPOKAgent
    from agents.herd import HERDAgent
    from agents.loop import LOOPAgent
    from agents.reinforce import ReinforceAgent
    from agents.rwr import RWRAgent

    classes: dict[str, type[Agent]] = {
        "reinforce": ReinforceAgent,
        "ddpo": DDPOAgent,
        "dpok": DPOKAgent,
        "loop": LOOPAgent,
        "rwr": RWRAgent,
        "herd": HERDAgent,
    }
    if name not in classes:
        raise ValueError(f"unknown agent {name!r}; expected one of {AGENT_NAMES}")
    return classes[name]


def make_agent(name: str, env, config: AgentConfig) -> Agent:
    """Build agent ``name`` on ``env`` (a ``DiffusionT2IVectorEnv``, or the object ``gym.make_vec`` returned)."""
    if config.herd_base not in AGENT_NAMES or config.herd_base == "herd":
        raise ValueError(f"herd_base must be one of {AGENT_NAMES[:-1]}, got {config.herd_base!r}")
    return agent_class(name)(env, config)


__all__ = [
    "AGENT_NAMES",
    "Agent",
    "AgentConfig",
    "DiffusionPolicy",
    "EpochResult",
    "Generation",
    "Trajectories",
    "agent_class",
    "collect_trajectories",
    "make_agent",
]

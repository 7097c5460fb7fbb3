"""The agents by name: :data:`AGENT_NAMES`, :func:`make_agent` and the name that rebuilds an agent."""

from __future__ import annotations

import dataclasses

from agents.base import Agent
from agents.config import AgentConfig
from agents.herd import HindsightRelabeler

AGENT_NAMES = ("reinforce", "ddpo", "dpok", "loop", "rwr", "nft", "herd")
HERD = "herd"  # not a class: the relabeler composed with the agent config.herd_base


def agent_class(name: str) -> type[Agent]:
    """The class of algorithm ``name`` (``"herd"``: not one; see :func:`make_agent`); ``ValueError`` listing
    :data:`AGENT_NAMES` for an unknown name."""
    from agents.ddpo import DDPOAgent
    from agents.dpok import DPOKAgent
    from agents.loop import LOOPAgent
    from agents.nft import NFTAgent
    from agents.reinforce import ReinforceAgent
    from agents.rwr import RWRAgent

    classes: dict[str, type[Agent]] = {
        "reinforce": ReinforceAgent,
        "ddpo": DDPOAgent,
        "dpok": DPOKAgent,
        "loop": LOOPAgent,
        "rwr": RWRAgent,
        "nft": NFTAgent,
    }
    if name == HERD:
        raise ValueError("'herd' is a relabeler composed with another agent: make_agent('herd', ...) builds it")
    if name not in classes:
        raise ValueError(f"unknown agent {name!r}; expected one of {AGENT_NAMES}")
    return classes[name]


def make_agent(name: str, env, config: AgentConfig) -> Agent:
    """Build agent ``name`` on ``env`` (the object ``gym.make_vec`` returned, possibly wrapped).

    ``"herd"`` is the agent ``config.herd_base`` composed with HERD's :class:`~agents.herd.HindsightRelabeler`.
    """
    if config.herd_base not in AGENT_NAMES or config.herd_base == HERD:
        raise ValueError(f"herd_base must be one of {AGENT_NAMES[:-1]}, got {config.herd_base!r}")
    if name == HERD:
        return agent_class(config.herd_base)(env, config, relabeler=HindsightRelabeler(config))
    return agent_class(name)(env, config)


def agent_spec(agent: Agent) -> tuple[str, AgentConfig]:
    """The :func:`make_agent` name and config that rebuild ``agent``: ``"herd"`` (with ``herd_base`` set to the
    agent's algorithm) when it has a relabeler, else its own name."""
    if agent.relabeler is None:
        return agent.name, agent.config
    return HERD, dataclasses.replace(agent.config, herd_base=agent.name)


__all__ = ["AGENT_NAMES", "agent_class", "agent_spec", "make_agent"]

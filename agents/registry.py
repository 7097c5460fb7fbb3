"""The agents by name: the built-in ones, the ones a user registers, and the name that rebuilds an agent.

The registry is open (like Gymnasium's env registry): an agent class defined anywhere joins it with
:func:`register_agent`, or, for an installed package, through the ``diffusion_gym.agents`` entry-point group::

    # pyproject.toml of the package that defines the agent
    [project.entry-points."diffusion_gym.agents"]
    mine = "my_package.my_agent:MyAgent"

A registered agent is built by :func:`make_agent`, trained by the :class:`~agents.training.trainer.Trainer`, compared
(:func:`agents.experiments.comparison.resolve_variants` takes :func:`agent_names`) and resumed. ``run.json`` records the
agent by its name only, so the process that resumes a run must know the name too: either the agent's module registers it
on import (import that module before ``Trainer.resume``) or its package declares the entry point, which every process
loads on the first lookup of a name it does not know.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import TYPE_CHECKING

from agents.catalog import (  # the names: plain data, shared with agents.config
    AGENT_NAMES,
    BUILTIN_AGENTS,
    ENTRY_POINT_GROUP,
    HERD,
    _registered,
    add_entry,
    agent_names,
    check_agent_name,
    load_entry_points,
)

if TYPE_CHECKING:
    from agents.algorithms.base import Agent
    from agents.config import AgentConfig


def register_agent(name: str, cls: type[Agent] | str, *, overwrite: bool = False) -> None:
    """Make agent class ``cls`` (an :class:`~agents.algorithms.base.Agent` subclass, or ``"module:Class"`` imported on
    first use) available as ``name`` to :func:`make_agent`, the trainer, its resume and comparisons.

    ``cls.name`` must be ``name`` (checkpoints record it). ``ValueError`` for a malformed name, a built-in's name,
    or a name registered to another class (``overwrite=True`` replaces it); ``TypeError`` if ``cls`` is not an
    Agent subclass. Registering the same class (same module and qualified name) again is a no-op, so that a module
    that registers its agent on import can be imported twice.
    """
    if not isinstance(cls, str):
        check_agent_name(name)
        _check_agent_class(name, cls)
    add_entry(name, cls, overwrite)


def unregister_agent(name: str) -> None:
    """Remove a registered agent (``KeyError`` if ``name`` is not one; built-ins cannot be removed)."""
    if name not in _registered:
        raise KeyError(f"no registered agent {name!r} (built-ins cannot be unregistered)")
    del _registered[name]


def agent_class(name: str) -> type[Agent]:
    """The class of algorithm ``name`` (``"herd"``: not one; see :func:`make_agent`); ``ValueError`` listing
    :func:`agent_names` for an unknown name."""
    if name == HERD:
        raise ValueError("'herd' is a relabeler composed with another agent: make_agent('herd', ...) builds it")
    if name in BUILTIN_AGENTS:
        return _load(BUILTIN_AGENTS[name])
    if name not in _registered:
        load_entry_points()
    if name not in _registered:
        raise ValueError(
            f"unknown agent {name!r}; expected one of {agent_names()}. An agent of your own: "
            f"agents.register_agent({name!r}, YourAgent) in this process (e.g. import the module that registers it, "
            f"also before resuming its runs), or a {ENTRY_POINT_GROUP!r} entry point in your package"
        )
    entry = _registered[name]
    if isinstance(entry, str):
        entry = _load(entry)
        _check_agent_class(name, entry)
        _registered[name] = entry
    return entry


def make_agent(name: str, env, config: AgentConfig) -> Agent:
    """Build agent ``name`` on ``env`` (the object ``gym.make_vec`` returned, possibly wrapped).

    ``"herd"`` is the agent ``config.herd_base`` composed with HERD's
    :class:`~agents.algorithms.herd.HindsightRelabeler` (any agent but ``"herd"``, a registered one included).
    """
    from agents.algorithms.herd import HindsightRelabeler
    from agents.config import AgentConfig

    if not isinstance(config, AgentConfig):
        raise TypeError(f"config must be an agents.AgentConfig, got {type(config).__name__}")
    config.validate()  # again: a field may have been assigned since construction (herd_base: the registry's agents)
    if name == HERD:
        return agent_class(config.herd_base)(env, config, relabeler=HindsightRelabeler(config))
    return agent_class(name)(env, config)


def agent_spec(agent: Agent) -> tuple[str, AgentConfig]:
    """The :func:`make_agent` name and config that rebuild ``agent``: ``"herd"`` (with ``herd_base`` set to the
    agent's algorithm) when it has a relabeler, else its own name.

    Warns when that name would not rebuild ``agent``'s class (a class not registered, or a subclass that kept its
    parent's ``name``): a run of it trains, but its resume would fail or build another agent."""
    try:
        rebuilt = agent_class(agent.name)
    except ValueError:
        rebuilt = None
    if rebuilt is not type(agent):
        what = f"builds {rebuilt.__qualname__}" if rebuilt is not None else "is not registered"
        warnings.warn(
            f"agent name {agent.name!r} {what}, not {type(agent).__qualname__}: a run of this agent cannot be resumed "
            f"as it is; give the class its own name and register_agent(name, {type(agent).__qualname__})",
            stacklevel=2,
        )
    if agent.relabeler is None:
        return agent.name, agent.config
    return HERD, dataclasses.replace(agent.config, herd_base=agent.name)


# ----------------------------------------------------------------------------------------------- helpers
def _check_agent_class(name: str, cls: object) -> None:
    from agents.algorithms.base import Agent

    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"agent {name!r} must be a subclass of agents.algorithms.base.Agent, got {cls!r}")
    if cls.name != name:
        raise ValueError(
            f"{cls.__qualname__}.name is {cls.name!r}, not {name!r}: set the class attribute name = {name!r} "
            "(checkpoints record it)"
        )


def _load(path: str) -> type[Agent]:
    """The class at ``"module:Qualified.name"``."""
    module_name, _, qualname = path.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[return-value]


__all__ = [
    "AGENT_NAMES",
    "BUILTIN_AGENTS",
    "ENTRY_POINT_GROUP",
    "agent_class",
    "agent_names",
    "agent_spec",
    "make_agent",
    "register_agent",
    "unregister_agent",
]

"""The agent names: the built-in table, the names registered in this process and the ``diffusion_gym.agents`` entry
points. Plain data that imports no agent (so that :mod:`agents.config` can check ``herd_base`` against it);
:mod:`agents.registry` checks and builds the classes behind the names.
"""

from __future__ import annotations

import re
import warnings
from importlib.metadata import entry_points

HERD = "herd"  # not a class: the relabeler composed with the agent config.herd_base

# The built-in algorithms: name -> "module:class", imported on first use (``import agents`` stays light).
# A new built-in agent is one line here (its class's ``name`` must be the key).
BUILTIN_AGENTS: dict[str, str] = {
    "reinforce": "agents.algorithms.reinforce:ReinforceAgent",
    "ddpo": "agents.algorithms.ddpo:DDPOAgent",
    "dpok": "agents.algorithms.dpok:DPOKAgent",
    "loop": "agents.algorithms.loop:LOOPAgent",
    "rwr": "agents.algorithms.rwr:RWRAgent",
    "nft": "agents.algorithms.nft:NFTAgent",
}

# The built-in agent names, HERD last (a fixed tuple, for the callers that list the package's own agents);
# :func:`agent_names` also lists the registered ones.
AGENT_NAMES: tuple[str, ...] = (*BUILTIN_AGENTS, HERD)

ENTRY_POINT_GROUP = "diffusion_gym.agents"
_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # lowercase: also a run folder's and a variant's name

_registered: dict[str, type | str] = {}  # name -> class, or "module:class" not imported yet
_entry_points_loaded = False


def check_agent_name(name: object) -> None:
    """``ValueError`` unless ``name`` can name an agent of your own (a well-formed name, not a built-in's)."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"agent name must be lowercase letters, digits, '_', '.' or '-' (a run folder's name), got {name!r}"
        )
    if name in AGENT_NAMES:
        raise ValueError(f"{name!r} is a built-in agent; register yours under another name")


def add_entry(name: str, entry: type | str, overwrite: bool = False) -> None:
    """Record ``entry`` (a class, checked by the caller, or ``"module:Class"``) under ``name``; ``ValueError`` for
    a bad name or import path, or a name registered to another class (unless ``overwrite``)."""
    check_agent_name(name)
    if isinstance(entry, str) and (entry.count(":") != 1 or not all(entry.split(":"))):
        raise ValueError(f"an agent's import path is 'module:Class', got {entry!r}")
    previous = _registered.get(name)
    if previous is not None and not overwrite and import_path(previous) != import_path(entry):
        raise ValueError(
            f"agent {name!r} is already registered to {import_path(previous)}; pass overwrite=True to replace it"
        )
    _registered[name] = entry


def agent_names() -> tuple[str, ...]:
    """Every agent name :func:`~agents.registry.make_agent` accepts: the built-ins (:data:`AGENT_NAMES`, ``"herd"``
    included), then the registered ones (by ``register_agent`` or the ``diffusion_gym.agents`` entry points)."""
    load_entry_points()
    return (*AGENT_NAMES, *(name for name in _registered if name not in AGENT_NAMES))


def import_path(entry: type | str) -> str:
    return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"


def load_entry_points() -> None:
    """Register the ``diffusion_gym.agents`` entry points of the installed packages (once per process; a name
    already registered in this process keeps its class)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _registered:
            continue
        try:
            add_entry(point.name, point.value)
        except ValueError as error:  # one broken plugin must not stop every agent (and the CLI) from loading
            warnings.warn(f"skipped the {ENTRY_POINT_GROUP} entry point {point.name!r}: {error}", stacklevel=2)


__all__ = ["AGENT_NAMES", "BUILTIN_AGENTS", "ENTRY_POINT_GROUP", "HERD", "agent_names", "check_agent_name"]

"""World reports: what a world can say about images beyond their scores (e.g. which facts of a prompt were drawn).

A world registers one report function under its name (``WorldInfo.world``); ``diffusion-gym evaluate`` adds the
report of the run's world to its table. Generic code looks reports up by name and never imports a world.

    register_world_report("shapes", my_report)
    report = world_report("shapes")  # (base_images, tuned_images, prompts) -> WorldReport, or None
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorldReport:
    """A world's report on base and fine-tuned images: ``values`` join ``evaluation.json``, ``lines`` the table."""

    values: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


ReportFn = Callable[[Any, Any, Sequence[str]], WorldReport]  # (base images, fine-tuned images, prompts)

_REPORTS: dict[str, ReportFn] = {}


def register_world_report(world: str, report: ReportFn) -> None:
    """Register ``report`` for the world named ``world`` (``ValueError`` if it already has another one)."""
    if not isinstance(world, str) or not world:
        raise ValueError(f"a world's name is a non-empty string, got {world!r}")
    if not callable(report):
        raise TypeError(f"a world report is a function (base images, fine-tuned images, prompts), got {report!r}")
    if _REPORTS.get(world, report) is not report:
        raise ValueError(f"world {world!r} already has a report")
    _REPORTS[world] = report


def world_report(world: str | None) -> ReportFn | None:
    """The report of ``world`` (None: the world has none, or no name)."""
    if world is None:
        return None
    from diffusion_gym.registrations import load_builtin_registrations  # the built-in worlds register on import

    load_builtin_registrations()
    return _REPORTS.get(world)


__all__ = ["ReportFn", "WorldReport", "register_world_report", "world_report"]

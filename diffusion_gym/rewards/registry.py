"""A registry of reward functions, looked up by name.

Every reward has one interface::

    reward_fn = make_reward("jpeg-compressibility", device="cpu")
    scores = reward_fn(images, prompts)   # images: (B, 3, H, W) float in [0, 1]; scores: (B,) float32

Rewards are registered with a *factory*, so that heavy models (ImageReward, CLIP) load only when a
reward is first asked for, and once per process and device (``make_reward`` caches them).

A weighted sum of registered rewards is written ``"name:weight,name:weight"``, e.g.
``"imagereward:1.0,aesthetic:0.1"``.

A reward that can score only some prompts (the Shapes gold scorer parses a small grammar) registers a
``check_prompt(prompt)`` that raises ``ValueError`` saying why; :func:`check_reward_prompt` and
:func:`reward_can_score` ask it without building the reward, so that the env refuses such a prompt at
construction or ``reset``, not at the episode's last step.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class RewardFn(Protocol):
    """``fn(images, prompts) -> scores``.

    Args:
        images: ``(B, 3, H, W)`` float tensor with values in ``[0, 1]``, on any device.
        prompts: ``B`` prompt strings (the goal each image is scored against).

    Returns:
        ``(B,)`` float32 tensor on the CPU.
    """

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class RewardSpec:
    """What the registry knows about a reward before it is built."""

    name: str
    factory: Callable[[torch.device], RewardFn]
    description: str
    uses_prompt: bool
    value_range: tuple[float, float] | None = None
    check_prompt: Callable[[str], object] | None = None  # raises ValueError for a prompt it cannot score


class UnknownRewardError(KeyError):
    """Raised for a reward name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


_REGISTRY: dict[str, RewardSpec] = {}
_CACHE: dict[tuple[str, str], RewardFn] = {}
_LOCK = threading.Lock()


def register_reward(
    name: str,
    factory: Callable[[torch.device], RewardFn],
    *,
    description: str,
    uses_prompt: bool,
    value_range: tuple[float, float] | None = None,
    check_prompt: Callable[[str], object] | None = None,
) -> None:
    """Register ``factory(device) -> RewardFn`` under ``name``. Re-registering a name is an error.

    ``check_prompt(prompt)``, for a reward that can score only some prompts, raises ``ValueError`` saying why it
    cannot score ``prompt`` (its return value is ignored); ``None``: the reward scores any prompt.
    """
    if name in _REGISTRY:
        raise ValueError(f"reward {name!r} is already registered")
    if "," in name or ":" in name:
        raise ValueError(f"reward names may not contain ',' or ':' (got {name!r})")
    _REGISTRY[name] = RewardSpec(name, factory, description, uses_prompt, value_range, check_prompt)


def registered_rewards() -> dict[str, RewardSpec]:
    """All registered rewards, by name."""
    _ensure_builtin_rewards()
    return dict(_REGISTRY)


def reward_spec(name: str) -> RewardSpec:
    """The spec of one registered reward; raises :class:`UnknownRewardError` for an unknown name."""
    _ensure_builtin_rewards()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownRewardError(f"unknown reward {name!r}; registered rewards: {known}")
    return _REGISTRY[name]


def parse_reward_weights(spec: str) -> list[tuple[str, float]]:
    """Parse ``"a"`` or ``"a:1.0,b:0.1"`` into ``[(name, weight), ...]``, checking every name."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward must be a non-empty string, got {spec!r}")
    terms: list[tuple[str, float]] = []
    for term in spec.split(","):
        name, sep, weight_text = term.strip().partition(":")
        try:
            weight = float(weight_text) if sep else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight_text!r} for reward {name!r} in {spec!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"weight of reward {name!r} must be finite, got {weight_text!r} in {spec!r}")
        reward_spec(name)  # raises for unknown names
        terms.append((name, weight))
    return terms


def validate_reward(spec: str) -> str:
    """Check a reward string (names and weights) without building any model; return it unchanged."""
    parse_reward_weights(spec)
    return spec


def check_reward_prompt(spec: str, prompt: str) -> None:
    """Raise ``ValueError`` if a reward of ``spec`` (every term of a weighted sum) cannot score ``prompt``.

    Builds no model: it asks each registered reward's ``check_prompt``.
    """
    for name, _ in parse_reward_weights(spec):
        check = reward_spec(name).check_prompt
        if check is None:
            continue
        try:
            check(prompt)
        except ValueError as error:
            raise ValueError(f"reward {name!r} cannot score the prompt {prompt!r}: {error}") from error


def reward_can_score(spec: str, prompt: str) -> bool:
    """Whether every term of the reward ``spec`` can score ``prompt`` (see :func:`check_reward_prompt`)."""
    try:
        check_reward_prompt(spec, prompt)
    except ValueError:
        return False
    return True


class WeightedSumReward:
    """``sum_i w_i * r_i(images, prompts)``: several registered rewards as one."""

    def __init__(self, terms: list[tuple[RewardFn, float]]):
        self.terms = terms

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        total = torch.zeros(images.shape[0], dtype=torch.float32)
        for reward_fn, weight in self.terms:
            total += weight * reward_fn(images, prompts).float().cpu()
        return total


def make_reward(spec: str, device: torch.device | str = "cpu") -> RewardFn:
    """Build (or fetch from the per-process cache) the reward named by ``spec`` on ``device``."""
    device = torch.device(device)
    terms = parse_reward_weights(spec)
    if len(terms) == 1 and terms[0][1] == 1.0:
        return _build_one(terms[0][0], device)
    return WeightedSumReward([(_build_one(name, device), weight) for name, weight in terms])


def _build_one(name: str, device: torch.device) -> RewardFn:
    key = (name, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = reward_spec(name).factory(device)
        return _CACHE[key]


def _ensure_builtin_rewards() -> None:
    from diffusion_gym.registrations import load_builtin_registrations  # the built-in worlds register on import

    load_builtin_registrations()

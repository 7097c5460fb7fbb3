"""The env's arguments, declared once: :class:`EnvConfig` (no torch import, so that it is cheap to import).

One dataclass serves everyone who handles the env's arguments:

* the single env and the native vector env build it from their keyword arguments
  (``EnvConfig.from_arguments(locals())``; a test checks that their signatures are its fields with its defaults);
* a run's settings hold one (``RunSettings.env``, recorded in ``run.json``) and rebuild the env from it;
* the trainer reads it back from an env made by ``gym.make_vec`` (:meth:`EnvConfig.of`);
* the command line's flags ``--model``, ``--reward``, ... are generated from its fields: type, range (the
  ``Annotated[..., Bound]``), default and help (the docstring under each field).

    config = EnvConfig(model="shapes", num_inference_steps=10)
    env = config.make(num_envs=16)          # gym.make_vec(..., array_backend="torch"): what the agents take
    EnvConfig.of(env) == config             # True
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any


@dataclass(frozen=True)
class Bound:
    """The values a numeric field may take: ``low`` and ``high`` (None: unbounded), inclusive unless ``*_open``;
    ``note`` says why, in the error. Declared on a field as ``Annotated[int, Bound(1)]``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """The range in words: ``>= 1``, ``> 0``, ``in (0, 1]``."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "any number"


# The tiny random pipeline (diffusion_gym.models.build_tiny_pipeline) has no world file: no default reward or
# prompts. Smoke runs of the probes and the quickstart test use these; its random UNet drifts, hence the bound.
TINY_REWARD = "jpeg-incompressibility"
TINY_PROMPTS = (
    "A red circle on the left. A blue square on the right.",
    "A green triangle. A gray background.",
    "A yellow star at the top. A purple circle at the bottom. A white background.",
    "A blue square.",
)
TINY_LATENT_BOUND = 1e4

ENV_ID = "DiffusionT2I-v1"  # the id the env is registered under (diffusion_gym/__init__.py registers it)

# keyword arguments of gym.make_vec that are not the env's configuration
VECTOR_ARGUMENTS = ("num_envs", "vectorization_mode", "array_backend")


@dataclass(frozen=True)
class EnvConfig:
    """The arguments of ``DiffusionT2I-v1`` that define the MDP (plain data; a list of prompts is kept as a tuple,
    so that the config is hashable)."""

    model: str = "shapes"
    """a named world, a pipeline folder or a diffusers hub id"""
    reward: str | None = None
    """reward to optimise: a registered name or a weighted sum 'a:1.0,b:0.1' (None: the world's)"""
    prompts: str | tuple[str, ...] | None = None
    """training prompts: a registered prompt set, one prompt, or prompts (None: the world's)"""
    num_inference_steps: Annotated[int | None, Bound(1)] = None
    """DDIM steps T per trajectory (None: the world's)"""
    device: str = "cpu"
    """torch device of the model (and of a run's agent)"""
    dtype: str = "float32"
    """dtype of the frozen model (UNet, VAE, text encoder). float16 or bfloat16 is mixed precision: a run's
    trainable LoRA weights, optimiser, log-probs and losses stay float32 (float16 adds a gradient scaler); float16
    is for GPUs, bfloat16 also runs on CPUs
    """
    latent_bound: Annotated[float, Bound(0, low_open=True)] = 50.0
    """the env's bound on latents, a sanity limit (the Shapes model's guided steps reach ~12); raise it for
    untrained test models
    """
    max_prompt_bytes: Annotated[int, Bound(1)] = 1024
    """the longest prompt in UTF-8 bytes (the size of the observation's goal encoding)"""
    image_cache_size: Annotated[int, Bound(0)] = 256
    """decoded images kept for compute_reward's relabelled goals (0: none)"""
    max_prompt_chunks: Annotated[int, Bound(1)] = 1
    """encode prompts longer than the text encoder's window (77 tokens for SD) in this many windows"""

    def __post_init__(self) -> None:
        if isinstance(self.prompts, list):  # frozen (hashable): a list of prompts is kept as a tuple
            object.__setattr__(self, "prompts", tuple(self.prompts))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The field names, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, object]) -> EnvConfig:
        """The config from an env constructor's ``locals()`` (taken before it assigns any name): every field by its
        name; the constructor's other arguments (``num_envs``, ``render_mode``, ...) are left to it."""
        return cls(**{name: arguments[name] for name in cls.fields()})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EnvConfig:
        """The config of the fields among ``values`` (other keys are ignored); missing ones keep their defaults."""
        return cls(**{name: values[name] for name in cls.fields() if name in values})

    @classmethod
    def of(cls, env) -> EnvConfig:
        """The config ``env`` was made with, from the keyword arguments ``gym.make_vec`` records in
        ``env.unwrapped.spec`` (a wrapped env is fine). ``ValueError`` for an env made another way."""
        spec = env.unwrapped.spec
        if spec is None or spec.id != ENV_ID:
            raise ValueError(
                f"cannot tell how this env was made ({type(env.unwrapped).__name__} without a {ENV_ID} spec): build "
                "it with gym.make_vec or diffusion_gym.EnvConfig(...).make(num_envs), so that a run folder can "
                "record and rebuild it"
            )
        unrecorded = sorted(set(spec.kwargs) - set(cls.fields()) - set(VECTOR_ARGUMENTS))
        if unrecorded:
            raise ValueError(
                f"the env was made with {unrecorded}, which a run folder does not record (it records {cls.fields()}): "
                "make it without them"
            )
        return cls.from_mapping(spec.kwargs)

    def make(self, num_envs: int, device: str | None = None):
        """The native vector env of ``num_envs`` episodes, with torch arrays on the env's device (what policies
        take; ``gym.make_vec`` alone returns numpy); ``device`` overrides :attr:`device` (e.g. this process's GPU
        in a data-parallel run)."""
        import gymnasium as gym  # ENV_ID is registered: importing this module ran diffusion_gym/__init__.py

        kwargs = {name: getattr(self, name) for name in self.fields()}
        kwargs["prompts"] = list(self.prompts) if isinstance(self.prompts, tuple) else self.prompts
        if device is not None:
            kwargs["device"] = device
        return gym.make_vec(
            ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", array_backend="torch", **kwargs
        )

    @classmethod
    def tiny(cls, folder: str | Path | None = None, **overrides: Any) -> EnvConfig:
        """A tiny random pipeline built into ``folder`` (default: a new temp folder), with :data:`TINY_REWARD`,
        :data:`TINY_PROMPTS` and :data:`TINY_LATENT_BOUND`, for smoke runs, not results; ``overrides`` replace
        fields (a None override keeps the tiny default: the tiny pipeline has no world defaults to fall back on)."""
        from diffusion_gym.models import build_tiny_pipeline

        folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="tiny-sd-")) / "pipeline"
        tiny = cls(str(build_tiny_pipeline(folder)), TINY_REWARD, TINY_PROMPTS, latent_bound=TINY_LATENT_BOUND)
        return dataclasses.replace(tiny, **{key: value for key, value in overrides.items() if value is not None})

    def checked(self) -> EnvConfig:
        """This config with ``model`` as a ``str`` (a path object is accepted), after the checks that need no model:
        ``reward``'s form and every numeric field against its declared :class:`Bound`.

        Raises ``TypeError``/``ValueError`` naming the first bad argument; nothing is replaced by a default. ``model``,
        ``device`` and ``dtype`` are checked by :func:`~diffusion_gym.models.load_model`, ``prompts`` by
        :func:`~diffusion_gym.prompts.resolve_prompts`.
        """
        if self.reward is not None and (not isinstance(self.reward, str) or not self.reward.strip()):
            raise ValueError(
                "reward must be a registered reward name or a weighted sum such as 'a:1.0,b:0.1' (None: the world's "
                f"default reward), got {self.reward!r}"
            )
        for name, (kind, bound) in numeric_fields(type(self)).items():
            value = getattr(self, name)
            if value is None and name == "num_inference_steps":  # None: the world's
                continue
            if kind is int:
                check_int(name, value, minimum=int(bound.low))
            elif not _is_real(value) or not (math.isfinite(value) and bound.contains(value)):
                raise ValueError(f"{name} must be a finite number {bound.text()}, got {value!r}")
        return dataclasses.replace(
            self, model=os.fspath(self.model) if isinstance(self.model, os.PathLike) else self.model
        )


def numeric_fields(cls: type) -> dict[str, tuple[type, Bound]]:
    """Per field of the dataclass ``cls`` annotated ``Annotated[T, Bound(...)]``: ``T`` (int or float; ``None``
    dropped from ``T | None``) and its :class:`Bound`."""
    import types
    import typing

    found = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        bounds = [extra for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, Bound)]
        if bounds:
            inner = typing.get_args(hint)[0]
            if typing.get_origin(inner) in (typing.Union, types.UnionType):
                inner = next(argument for argument in typing.get_args(inner) if argument is not type(None))
            found[name] = (inner, bounds[0])
    return found


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int) -> int:
    """``int(value)`` if ``value`` is an integer (not a bool) ``>= minimum``; else an error naming ``name``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


__all__ = [
    "TINY_LATENT_BOUND",
    "TINY_PROMPTS",
    "TINY_REWARD",
    "Bound",
    "ENV_ID",
    "EnvConfig",
    "check_int",
    "numeric_fields",
]

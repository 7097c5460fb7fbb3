"""The one place that builds a run's env from settings: :class:`EnvSettings` (and the tiny test world).

A run records the arguments of its env in ``run.json`` (:class:`agents.run_folder.RunSettings` holds them as
flat fields) and rebuilds the env from them on resume; the CLI, the re-evaluation, the presets and the
research probes build theirs the same way::

    env = EnvSettings(model="shapes", num_inference_steps=10).make(num_envs=16)

``EnvSettings.of(env)`` reads them back from an env made by ``gym.make_vec`` (Gymnasium records the keyword
arguments in ``env.unwrapped.spec``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

import diffusion_gym

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


@dataclass(frozen=True)
class EnvSettings:
    """The arguments of ``DiffusionT2I-v1`` that a run records and rebuilds its env from (the env's defaults)."""

    model: str = "shapes"  # a named world, a pipeline folder or a diffusers hub id
    reward: str | None = None  # None: the world's default reward
    prompts: str | tuple[str, ...] | None = None  # a prompt set name, one prompt, or prompts; None: the world's
    num_inference_steps: int | None = None  # None: the world's
    device: str = "cpu"
    dtype: str = "float32"  # of the frozen model; float16/bfloat16: mixed precision
    latent_bound: float = 50.0
    max_prompt_chunks: int = 1  # encode prompts longer than the text encoder's window in this many windows

    def __post_init__(self) -> None:
        if isinstance(self.prompts, list):  # frozen (hashable): a list of prompts is kept as a tuple
            object.__setattr__(self, "prompts", tuple(self.prompts))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | Any) -> EnvSettings:
        """The env settings among ``values`` (a mapping or an object with these attributes, e.g. a RunSettings);
        missing ones keep the env's defaults."""
        get = values.get if isinstance(values, Mapping) else (lambda key, default: getattr(values, key, default))
        found = {name: get(name, dataclasses.MISSING) for name in cls.fields()}
        return cls(**{name: value for name, value in found.items() if value is not dataclasses.MISSING})

    @classmethod
    def of(cls, env) -> EnvSettings:
        """The settings ``env`` was made with, from the keyword arguments ``gym.make_vec`` records in
        ``env.unwrapped.spec`` (a wrapped env is fine). ``ValueError`` for an env made another way."""
        spec = env.unwrapped.spec
        if spec is None or spec.id != diffusion_gym.ENV_ID:
            raise ValueError(
                f"cannot tell how this env was made ({type(env.unwrapped).__name__} without a {diffusion_gym.ENV_ID} "
                "spec): build it with gym.make_vec or agents.EnvSettings(...).make(num_envs), so that a run folder "
                "can record and rebuild it"
            )
        unrecorded = sorted(set(spec.kwargs) - set(cls.fields()) - {"num_envs", "vectorization_mode", "array_backend"})
        if unrecorded:
            raise ValueError(
                f"the env was made with {unrecorded}, which a run folder does not record (it records {cls.fields()}): "
                "make it without them"
            )
        return cls.from_mapping(spec.kwargs)

    def make(self, num_envs: int, device: str | None = None):
        """The vector env: ``num_envs`` episodes of ``DiffusionT2I-v1``; ``device`` overrides :attr:`device`
        (e.g. this process's GPU in a data-parallel run)."""
        kwargs = dataclasses.asdict(self)
        if isinstance(self.prompts, tuple):
            kwargs["prompts"] = list(self.prompts)
        if device is not None:
            kwargs["device"] = device
        # array_backend="torch": the agents take torch tensors on the env's device (the env's default is numpy)
        return gym.make_vec(
            diffusion_gym.ENV_ID,
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            array_backend="torch",
            **kwargs,
        )

    @classmethod
    def tiny(cls, folder: str | Path | None = None, **overrides: Any) -> EnvSettings:
        """A tiny random pipeline built into ``folder`` (default: a new temp folder), with :data:`TINY_REWARD`,
        :data:`TINY_PROMPTS` and :data:`TINY_LATENT_BOUND`, for smoke runs, not results; ``overrides`` replace
        fields (a None override keeps the tiny default: the tiny pipeline has no world defaults to fall back on)."""
        from diffusion_gym.models import build_tiny_pipeline

        folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="tiny-sd-")) / "pipeline"
        tiny = cls(str(build_tiny_pipeline(folder)), TINY_REWARD, TINY_PROMPTS, latent_bound=TINY_LATENT_BOUND)
        return dataclasses.replace(tiny, **{key: value for key, value in overrides.items() if value is not None})


__all__ = ["TINY_LATENT_BOUND", "TINY_PROMPTS", "TINY_REWARD", "EnvSettings"]

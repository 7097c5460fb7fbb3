"""``DiffusionT2I-v0``, the id of the project's design: its entry points warn (:data:`V0_WARNING`, what differs)
and make the v1 env (single and vector) with the same arguments. Registered in :mod:`diffusion_gym`."""

from __future__ import annotations

import warnings
from typing import Any

from diffusion_gym.env import DiffusionT2IEnv
from diffusion_gym.vector_env import DiffusionT2IVectorEnv

V0_WARNING = (
    "DiffusionT2I-v0 makes the DiffusionT2I-v1 env (v0's own Shapes weights are no longer shipped); make "
    "'DiffusionT2I-v1' to silence this warning. What differs from v0: (1) the default Shapes world has its fourth "
    "weights (v-prediction, zero terminal SNR, 'trailing' DDIM steps): the first observation's timestep is 999, not "
    "951, and no episode is v0's for the same seed; (2) the vector env returns numpy arrays by default (v0: torch "
    "tensors on the device; pass array_backend='torch'); (3) the vector env's model, scheduler, timesteps, codec, "
    "prompts, encode_prompts, unconditional_embedding and make_sibling are gone: use env.unwrapped.diffusion "
    "(make_sibling is diffusion.new_vector_env) and info['prompt']; (4) arguments, seeds, reset options, prompts "
    "and actions that v0 took or corrected are errors (docs/env.md, 'Registration and versions')."
)


def warn_v0() -> None:
    """Warn that ``DiffusionT2I-v0`` makes the v1 env, and what differs (called by the v0 entry points)."""
    warnings.warn(V0_WARNING, UserWarning, stacklevel=4)  # the caller of gym.make / gym.make_vec


def make_v0_env(**kwargs: Any) -> DiffusionT2IEnv:
    """The entry point of ``DiffusionT2I-v0``: :data:`V0_WARNING`, then the v1 env with these arguments."""
    warn_v0()
    return DiffusionT2IEnv(**kwargs)


make_v0_env.metadata = DiffusionT2IEnv.metadata  # what gym.make reads of an entry point (render modes)


def make_v0_vector_env(num_envs: int, **kwargs: Any) -> DiffusionT2IVectorEnv:
    """The vector entry point of ``DiffusionT2I-v0``: its warning, then the v1 vector env with these arguments."""
    warn_v0()
    return DiffusionT2IVectorEnv(num_envs, **kwargs)


__all__ = ["V0_WARNING", "make_v0_env", "make_v0_vector_env", "warn_v0"]

"""The env a run trains on is built from :class:`diffusion_gym.EnvConfig`, the env's arguments declared once.

``EnvSettings`` is that same class under the name the agents used before it moved into the env package (code written
for it keeps working; new code says ``EnvConfig``)::

    env = EnvConfig(model="shapes", num_inference_steps=10).make(num_envs=16)
    EnvConfig.of(env)  # read back from the spec gym.make_vec records
"""

from __future__ import annotations

from diffusion_gym.env_config import TINY_LATENT_BOUND, TINY_PROMPTS, TINY_REWARD, EnvConfig

EnvSettings = EnvConfig  # the former name

__all__ = ["TINY_LATENT_BOUND", "TINY_PROMPTS", "TINY_REWARD", "EnvConfig", "EnvSettings"]

"""diffusion-gym: the denoising process of a text-to-image diffusion model as a goal-conditioned Gymnasium env.

``import diffusion_gym`` registers ``DiffusionT2I-v1`` (single env and native batched vector env).
Gymnasium 1.x has no plugin auto-registration, so either import this package first or name the module in
the id: ``gym.make("diffusion_gym:DiffusionT2I-v1")``.
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_ID = "DiffusionT2I-v1"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="diffusion_gym.env:DiffusionT2IEnv",
        vector_entry_point="diffusion_gym.vector_env:DiffusionT2IVectorEnv",
    )

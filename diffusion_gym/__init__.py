"""diffusion-gym: the denoising process of a text-to-image diffusion model as a goal-conditioned Gymnasium env.

``import diffusion_gym`` registers ``DiffusionT2I-v1`` (single env and native batched vector env), and
``DiffusionT2I-v0``, which makes the same env with a warning that says what differs from v0 (v0's own weights are no
longer shipped). Gymnasium 1.x has no plugin auto-registration, so either import this package first or name the
module in the id: ``gym.make("diffusion_gym:DiffusionT2I-v1")``.

``gym.make`` returns the env itself, without Gymnasium's ``OrderEnforcing`` and ``PassiveEnvChecker`` wrappers: the
env enforces the call order itself (``step`` or ``render`` before ``reset`` raises ``ResetNeeded``) and passes
Gymnasium's checker (``tests/test_env_contract.py``), and Gymnasium 1.x wrappers do not forward ``compute_reward``,
which goal-conditioned code (SB3's ``check_env``, HER) calls on the env it is given.
``gym.make(..., disable_env_checker=False)`` adds the passive checker back.

The env's arguments are one dataclass, :class:`EnvConfig`: ``EnvConfig(num_inference_steps=10).make(num_envs=16)``.
"""

from gymnasium.envs.registration import register, registry

from diffusion_gym.env_config import ENV_ID, EnvConfig  # the env's id and arguments, declared once (no torch)

__version__ = "0.1.0"

V0_ENV_ID = "DiffusionT2I-v0"

# gym.make adds no wrapper (see the module docstring); the env enforces the call order itself
_NO_WRAPPERS = {"order_enforce": False, "disable_env_checker": True}

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="diffusion_gym.env:DiffusionT2IEnv",
        vector_entry_point="diffusion_gym.vector_env:DiffusionT2IVectorEnv",
        **_NO_WRAPPERS,
    )
if V0_ENV_ID not in registry:
    register(
        id=V0_ENV_ID,
        entry_point="diffusion_gym.v0:make_v0_env",
        vector_entry_point="diffusion_gym.v0:make_v0_vector_env",
        **_NO_WRAPPERS,
    )

__all__ = ["ENV_ID", "V0_ENV_ID", "EnvConfig"]

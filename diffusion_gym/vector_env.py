"""``DiffusionT2I-v0`` as a native batched vector env: all ``N`` episodes are one batch on one device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from diffusion_gym.core import DiffusionMDP, EnvConfig
from diffusion_gym.env import DiffusionT2IEnv


class DiffusionT2IVectorEnv(VectorEnv):
    """``N`` episodes of :class:`~diffusion_gym.env.DiffusionT2IEnv` (read its docstring) run as one batch.

    * One text-encoder call per reset, one VAE decode and one reward call at the end of the episodes.
    * Observations, rewards and ``terminated`` are **torch tensors on the env's device** (as in GPU-native
      envs); actions are ``(N, C, H, W)`` tensors (numpy arrays are accepted too). Nothing is copied to the
      host on the hot path.
    * Sub-env ``i`` draws its noise and prompt from its own RNG, seeded ``seed + i`` on ``reset(seed=seed)``
      (or from ``seed[i]`` for a list), exactly as a single env seeded ``seed + i`` does: same seeds and
      same actions give the same episodes and rewards.
    * Every episode has the same length ``T``, so all sub-envs terminate together. Autoreset follows
      ``AutoresetMode.NEXT_STEP``: the ``step`` after termination resets (its actions are ignored, its
      rewards are 0).
    * ``reset(options={"prompts": [...]})`` sets the goal of every sub-env (``{"prompt": p}`` sets one for all).
    * At termination ``info`` holds ``final_images`` ``(N, 3, H, W)`` in [0, 1] and, where the world defines
      them, ``gold_score`` / ``proxy_score`` ``(N,)``, each with a ``_key`` mask as in Gymnasium's vector envs.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        model: str = "shapes",
        reward: str | None = None,
        prompts: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        latent_bound: float = 50.0,
        max_prompt_bytes: int = 1024,
        image_cache_size: int = 256,
        max_prompt_chunks: int = 1,
        render_mode: str | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        config = EnvConfig(
            model=model,
            reward=reward,
            prompts=prompts,
            num_inference_steps=num_inference_steps,
            device=device,
            dtype=dtype,
            latent_bound=latent_bound,
            max_prompt_bytes=max_prompt_bytes,
            image_cache_size=image_cache_size,
            max_prompt_chunks=max_prompt_chunks,
        )
        self.mdp = DiffusionMDP(config, num_envs=num_envs)
        self.num_envs = num_envs
        self.single_observation_space = self.mdp.single_observation_space()
        self.single_action_space = self.mdp.single_action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self.device = self.mdp.model.device

    # Convenience accessors for policies that drive the env.
    @property
    def model(self):
        return self.mdp.model

    @property
    def timesteps(self) -> torch.Tensor:
        return self.mdp.timesteps

    @property
    def scheduler(self):
        return self.mdp.scheduler

    @property
    def codec(self):
        return self.mdp.codec

    @property
    def prompts(self) -> list[str]:
        return self.mdp.prompts

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._rngs is None:
            seeds = (
                seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(self.num_envs)]
            )
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        options = options or {}
        prompts = options.get("prompts")
        if prompts is None:
            prompts = [options.get("prompt")] * self.num_envs
        if len(prompts) != self.num_envs:
            raise ValueError(f"options['prompts'] has {len(prompts)} prompts for {self.num_envs} envs")
        starts = [self.mdp.sample_start(rng, prompt) for rng, prompt in zip(self._rngs, prompts, strict=True)]
        noise = torch.stack([latent for latent, _ in starts])  # (N, C, H, W)
        self.mdp.reset(noise, [prompt for _, prompt in starts])
        return self.mdp.observation(), {"prompt": list(self.mdp.prompts)}

    def step(self, actions):
        if self.mdp.step_index is not None and self.mdp.terminated:  # NEXT_STEP autoreset
            observation, info = self.reset()
            zeros = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
            falses = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
            return observation, zeros, falses, falses.clone(), info
        actions = torch.as_tensor(actions) if not isinstance(actions, torch.Tensor) else actions
        rewards, extras = self.mdp.step(actions)
        terminated = torch.full((self.num_envs,), self.mdp.terminated, dtype=torch.bool, device=self.device)
        truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        info: dict[str, Any] = {"prompt": list(self.mdp.prompts)}
        for key, value in extras.items():
            info[key] = value
            info[f"_{key}"] = np.ones(self.num_envs, dtype=bool)
        return self.mdp.observation(), rewards.to(self.device), terminated, truncated, info

    def compute_reward(self, achieved_goal, desired_goal, info=None) -> torch.Tensor:
        """Vectorised goal-conditioned reward, goals ``(B, G)`` -> ``(B,)`` float32 (CPU tensor)."""
        return self.mdp.compute_reward(achieved_goal, desired_goal)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The frozen text encoder's hidden states ``(B, S, D)`` for (relabeled) goal prompts."""
        for prompt in prompts:
            self.mdp.check_prompt(prompt)
        return self.mdp.encode_text(prompts)

    @property
    def unconditional_embedding(self) -> torch.Tensor:
        """The empty prompt's embedding ``(1, S, D)``: the null condition of classifier-free guidance."""
        if not hasattr(self, "_unconditional_embedding"):
            self._unconditional_embedding = self.mdp.encode_text([""])
        return self._unconditional_embedding

    def render(self):
        if self.render_mode is None:
            return None
        return self.mdp.render()


DiffusionT2IVectorEnv.__doc__ += "\n\nThe MDP, spaces and arguments:\n" + (DiffusionT2IEnv.__doc__ or "")

"""``DiffusionT2I-v1`` as a native batched vector env: all ``N`` episodes are one batch on one device."""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from diffusion_gym.core import DiffusionHandle, DiffusionMDP, EnvConfig
from diffusion_gym.env import DiffusionT2IEnv
from diffusion_gym.rewards.async_scoring import AsyncRewardScorer

StepResult = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


@dataclasses.dataclass
class _PendingStep:
    """A step between ``step_async`` and ``step_wait``: done (``result``), or a terminal step being scored."""

    result: StepResult | None = None
    images: torch.Tensor | None = None  # (N, 3, H, W): the final images, being scored
    scores: dict[str, Future[torch.Tensor]] = dataclasses.field(default_factory=dict)  # key -> (N,) scores


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
    * Gymnasium's split step (as in ``AsyncVectorEnv``): ``step_async(actions)`` then ``step_wait()`` returns what
      ``step(actions)`` returns. At the terminal step, ``step_async`` does the transition and the VAE decode on the
      caller's thread and queues the reward (and the gold/proxy scores) on the env's
      :class:`~diffusion_gym.rewards.async_scoring.AsyncRewardScorer` (a worker thread, started on first use and
      stopped by ``close()``), then returns at once: the caller can sample another batch, e.g. on a second env
      (``env.diffusion.new_vector_env``), while the reward model scores this one. ``step_wait`` blocks on the scores and
      re-raises a reward's exception. Other steps are done by ``step_async`` itself. Calling ``step_async``,
      ``step`` or ``reset`` while a step is pending raises ``AlreadyPendingCallError``; ``step_wait`` without a
      pending step, ``NoAsyncCallError``.
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
        self.diffusion = DiffusionHandle(self.mdp)  # the public interface for policies (see DiffusionHandle)
        self.num_envs = num_envs
        self.single_observation_space = self.mdp.single_observation_space()
        self.single_action_space = self.mdp.single_action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self.device = self.mdp.model.device
        self._pending: _PendingStep | None = None  # between step_async and step_wait
        self._scorer: AsyncRewardScorer | None = None  # started by the first terminal step_async

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        self._check_no_pending("reset")
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

    def step(self, actions) -> StepResult:
        """One step of every sub-env; the same as ``step_async(actions)`` then ``step_wait()``, all on this thread."""
        self._check_no_pending("step")
        if self._autoreset_due():
            return self._autoreset()
        rewards, extras = self.mdp.step(_as_tensor(actions))
        return self._step_result(rewards, extras)

    def step_async(self, actions) -> None:
        """Start a step; :meth:`step_wait` returns its result. Only the terminal step's scoring is left running.

        The transition, the decode and the action checks run here (bad actions raise here); the reward and the
        world's extra scores are queued on the env's reward scorer (one worker thread).
        """
        self._check_no_pending("step_async")
        if self.closed:
            raise ClosedEnvironmentError("step_async() called on a closed env")
        if self._autoreset_due():
            self._pending = _PendingStep(result=self._autoreset())
            return
        images = self.mdp.advance(_as_tensor(actions))  # (N, 3, H, W) at the terminal step, else None
        if images is None:
            self._pending = _PendingStep(result=self._step_result(torch.zeros(self.num_envs, dtype=torch.float32), {}))
            return
        if self._scorer is None:  # no clone: `images` is fresh, and the caller gets it only once it is scored
            self._scorer = AsyncRewardScorer(self.mdp.reward_fn, clone=False)
        prompts = list(self.mdp.prompts)
        scores = {
            key: self._scorer.submit(images, prompts, reward_fn)
            for key, reward_fn in self.mdp.terminal_scorers().items()
        }
        self._pending = _PendingStep(images=images, scores=scores)

    def step_wait(self) -> StepResult:
        """The result of the step started by :meth:`step_async` (at the terminal step: waits for the scores).

        A reward that raised on the worker raises its exception here; the episodes stay terminated (the next
        step resets).
        """
        if self._pending is None:
            raise NoAsyncCallError("Calling `step_wait` without any prior call to `step_async`.", "step")
        pending, self._pending = self._pending, None
        if pending.result is not None:
            return pending.result
        scores = {key: future.result() for key, future in pending.scores.items()}  # (N,) each; re-raises
        return self._step_result(*self.mdp.terminal_outcome(pending.images, scores))

    def _check_no_pending(self, call: str) -> None:
        if self._pending is not None:
            raise AlreadyPendingCallError(
                f"Calling `{call}` while waiting for a pending call to `step` to complete (call `step_wait`).", "step"
            )

    def _autoreset_due(self) -> bool:
        return self.mdp.step_index is not None and self.mdp.terminated

    def _autoreset(self) -> StepResult:
        """NEXT_STEP autoreset: the step after termination resets; its actions are ignored, its rewards are 0."""
        observation, info = self.reset()
        zeros = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
        falses = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return observation, zeros, falses, falses.clone(), info

    def _step_result(self, rewards: torch.Tensor, extras: dict[str, object]) -> StepResult:
        terminated = torch.full((self.num_envs,), self.mdp.terminated, dtype=torch.bool, device=self.device)
        truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        info: dict[str, Any] = {"prompt": list(self.mdp.prompts)}
        for key, value in extras.items():
            info[key] = value
            info[f"_{key}"] = np.ones(self.num_envs, dtype=bool)
        return self.mdp.observation(), rewards.to(self.device), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Stop the reward scorer's worker thread (after the scores already queued); a pending step is dropped."""
        self._pending = None
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def compute_reward(self, achieved_goal, desired_goal, info=None) -> torch.Tensor:
        """Vectorised goal-conditioned reward, goals ``(B, G)`` -> ``(B,)`` float32 (CPU tensor)."""
        return self.mdp.compute_reward(achieved_goal, desired_goal)

    def render(self):
        if self.render_mode is None:
            return None
        return self.mdp.render()


def _as_tensor(actions) -> torch.Tensor:
    return torch.as_tensor(actions) if not isinstance(actions, torch.Tensor) else actions


DiffusionT2IVectorEnv.__doc__ += "\n\nThe MDP, spaces and arguments:\n" + (DiffusionT2IEnv.__doc__ or "")

"""``DiffusionT2I-v1`` as a native batched vector env: all ``N`` episodes are one batch on one device."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from diffusion_gym.core import (
    DiffusionHandle,
    DiffusionMDP,
    EnvConfig,
    TerminalOutcome,
    check_prompt_option,
    check_render_mode,
    check_reset_options,
    check_seed,
)
from diffusion_gym.rewards.async_scoring import AsyncRewardScorer

ARRAY_BACKENDS = ("numpy", "torch")

# (observation, rewards, terminations, truncations, info): numpy arrays or torch tensors (the env's array_backend)
StepResult = tuple[dict[str, Any], Any, Any, Any, dict[str, Any]]


class PromptArray(np.ndarray):
    """The goal prompts in a vector step's ``info["prompt"]``: a 1-D numpy array of ``str`` (dtype ``object``),
    Gymnasium's form for a string info entry (``DictInfoToList`` splits it per sub-env).

    Its own type only so that Gymnasium's array conversions (``NumpyToTorch``, ``array_conversion``) pass it through
    unchanged: a string has no tensor form, and Gymnasium 1.x cannot convert an object array (``BufferError``).
    """


def prompt_array(prompts: Sequence[str]) -> PromptArray:
    """``prompts`` as a :class:`PromptArray` ``(N,)``."""
    array = np.empty(len(prompts), dtype=object)
    array[:] = list(prompts)
    return array.view(PromptArray)


def _register_prompt_pass_through() -> None:
    try:
        from gymnasium.wrappers.array_conversion import array_conversion
    except ImportError:  # a Gymnasium without array conversions (or without array-api-compat): nothing to teach
        return

    @array_conversion.register(PromptArray)
    def _pass_through(value: PromptArray, xp: Any, device: Any = None) -> PromptArray:
        return value


_register_prompt_pass_through()


@dataclasses.dataclass
class _PendingStep:
    """A step between ``step_async`` and ``step_wait``: done (``result``), or a terminal step being scored."""

    result: StepResult | None = None
    images: torch.Tensor | None = None  # (N, 3, H, W): the final images, being scored
    prompts: list[str] = dataclasses.field(default_factory=list)  # their goal prompts
    scores: dict[str, Future[torch.Tensor]] = dataclasses.field(default_factory=dict)  # key -> (N,) scores


class DiffusionT2IVectorEnv(VectorEnv):
    """``N`` episodes of :class:`~diffusion_gym.env.DiffusionT2IEnv` (read its docstring) run as one batch.

    * One text-encoder call per reset, one VAE decode and one reward call at the end of the episodes.
    * **Array backend** (``array_backend``), following Gymnasium's vector conventions:

      - ``"numpy"`` (default): observations are dicts of numpy arrays ``(N, ...)`` (copies), rewards a float64
        array ``(N,)``, terminations and truncations bool arrays ``(N,)``, as a ``SyncVectorEnv`` of the single env
        gives them; so Gymnasium's vector wrappers (``RecordEpisodeStatistics``, ``NormalizeReward``,
        ``DictInfoToList``, ``ClipReward``, ``TransformReward``, ``NumpyToTorch``, ...) work on it.
      - ``"torch"``: the same values as torch tensors **on the env's device** (rewards float32): nothing is copied
        to the host on the hot path; what GPU policies (the agents) use. The observation tensors are the env's own
        state: clone one before writing into it.

      Actions may be numpy arrays or torch tensors in both, ``(N, C, H, W)``. ``compute_reward`` returns a float32
      numpy array or a float32 tensor on the device. ``env.diffusion`` takes and returns torch tensors in both.
    * ``info`` follows Gymnasium's vector form: every entry is an array ``(N,)`` (a tensor in the torch backend)
      with a bool mask ``info["_key"]`` of the sub-envs it holds for. ``prompt`` (every step: the goal prompts, a
      :class:`PromptArray` of ``str`` in both backends). At termination: ``final_images`` ``(N, 3, H, W)`` float32 in
      [0, 1] and, where the world defines them, ``gold_score`` / ``proxy_score`` ``(N,)``: NaN, with the mask
      False, for a prompt the world's scorer cannot score (e.g. one outside the Shapes gold grammar); a score that
      applies to no sub-env is absent.
    * Sub-env ``i`` draws its noise and prompt from its own RNG, seeded ``seed + i`` on ``reset(seed=seed)``
      (or from ``seed[i]`` for a list or tuple of ``N`` seeds), exactly as a single env seeded ``seed + i`` does:
      same seeds and same actions give the same episodes and rewards. Seeds are ints >= 0 (or ``None``).
    * Every episode has the same length ``T``, so all sub-envs terminate together. Autoreset follows
      ``AutoresetMode.NEXT_STEP``: the ``step`` after termination resets (its actions are ignored, its
      rewards are 0).
    * ``reset(options={"prompts": [...]})`` (a list or tuple of ``N`` prompts) sets the goal of every sub-env;
      ``{"prompt": p}`` sets one for all. Any other key, both keys, or a wrong type is an error; every prompt is
      checked before anything is drawn, so a refused ``reset`` changes nothing.
    * Gymnasium's split step (as in ``AsyncVectorEnv``): ``step_async(actions)`` then ``step_wait()`` returns what
      ``step(actions)`` returns. At the terminal step, ``step_async`` does the transition and the VAE decode on the
      caller's thread and queues the reward (and the gold/proxy scores) on the env's
      :class:`~diffusion_gym.rewards.async_scoring.AsyncRewardScorer` (a worker thread, started on first use and
      stopped by ``close()``), then returns at once: the caller can sample another batch, e.g. on a second env
      (``env.diffusion.new_vector_env``), while the reward model scores this one. ``step_wait`` blocks on the scores and
      re-raises a reward's exception. Other steps are done by ``step_async`` itself. Calling ``step_async``,
      ``step`` or ``reset`` while a step is pending raises ``AlreadyPendingCallError``; ``step_wait`` without a
      pending step, ``NoAsyncCallError``; ``step``, ``step_async`` or ``reset`` after ``close()``,
      ``ClosedEnvironmentError``.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        model: str | os.PathLike[str] = "shapes",
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
        array_backend: str = "numpy",
    ):
        config = EnvConfig.from_arguments(locals())
        self.render_mode = check_render_mode(render_mode, self.metadata["render_modes"])
        if array_backend not in ARRAY_BACKENDS:
            raise ValueError(f"array_backend must be one of {ARRAY_BACKENDS}, got {array_backend!r}")
        self.array_backend = array_backend
        self.mdp = DiffusionMDP(config, num_envs=num_envs)
        # the public interface for policies (see DiffusionHandle); its new_vector_env keeps this array backend
        self.diffusion = DiffusionHandle(self.mdp, DiffusionT2IVectorEnv, array_backend)
        self.num_envs = self.mdp.num_envs
        self.single_observation_space = self.mdp.single_observation_space()
        self.single_action_space = self.mdp.single_action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self.device = self.mdp.model.device
        self._pending: _PendingStep | None = None  # between step_async and step_wait
        self._scorer: AsyncRewardScorer | None = None  # started by the first terminal step_async

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        self._check_open("reset")
        self._check_no_pending("reset")
        prompts = self._option_prompts(options)  # every option checked before anything is drawn
        seeds = self._seeds(seed)
        if seeds is not None:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        starts = [self.mdp.sample_start(rng, prompt) for rng, prompt in zip(self._rngs, prompts, strict=True)]
        noise = torch.stack([latent for latent, _ in starts])  # (N, C, H, W)
        self.mdp.reset(noise, [prompt for _, prompt in starts])
        return self._observation(), self._info()

    def _option_prompts(self, options: object) -> list[str | None]:
        """The goal prompt of each sub-env from the ``reset`` options (``None``: drawn from the prompt pool)."""
        options = check_reset_options(
            options,
            {"prompts": f"a list or tuple of {self.num_envs} goal prompts", "prompt": "one goal prompt for all"},
        )
        prompts, prompt = options.get("prompts"), options.get("prompt")
        if prompts is not None and prompt is not None:
            raise ValueError(
                "reset options: give either 'prompts' (one per sub-env) or 'prompt' (one for all), not both"
            )
        if prompts is not None:
            if not isinstance(prompts, (list, tuple)):
                raise TypeError(
                    f"options['prompts'] must be a list or tuple of {self.num_envs} prompts, got "
                    f"{type(prompts).__name__}: {prompts!r}"
                )
            if len(prompts) != self.num_envs:
                raise ValueError(f"options['prompts'] has {len(prompts)} prompts for {self.num_envs} envs")
            for index, item in enumerate(prompts):
                check_prompt_option(f"options['prompts'][{index}]", item)
            chosen: list[str | None] = list(prompts)
        else:
            chosen = [None if prompt is None else check_prompt_option("options['prompt']", prompt)] * self.num_envs
        for item in dict.fromkeys(p for p in chosen if p is not None):
            self.mdp.check_prompt(item)
        return chosen

    def _seeds(self, seed: object) -> list[int | None] | None:
        """One seed per sub-env from ``reset``'s ``seed`` (``None``: keep the RNGs, if there are any).

        Each seed is checked by :func:`~diffusion_gym.core.check_seed`, as the single env checks its seed."""
        forms = f"an int >= 0, a list or tuple of {self.num_envs} such ints (or None), or None"
        if isinstance(seed, (list, tuple)):
            if len(seed) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds (one per sub-env), got {len(seed)}: {seed!r}")
            return [check_seed(item, f"seed[{index}]", forms) for index, item in enumerate(seed)]
        seed = check_seed(seed, "seed", forms)
        if seed is None:
            return [None] * self.num_envs if self._rngs is None else None
        return [seed + i for i in range(self.num_envs)]

    def step(self, actions) -> StepResult:
        """One step of every sub-env; the same as ``step_async(actions)`` then ``step_wait()``, all on this thread."""
        self._check_open("step")
        self._check_no_pending("step")
        if self._autoreset_due():
            return self._autoreset()
        rewards, outcome = self.mdp.step(actions)
        return self._step_result(rewards, outcome)

    def step_async(self, actions) -> None:
        """Start a step; :meth:`step_wait` returns its result. Only the terminal step's scoring is left running.

        The transition, the decode and the action checks run here (bad actions raise here); the reward and the
        world's extra scores are queued on the env's reward scorer (one worker thread).
        """
        self._check_open("step_async")
        self._check_no_pending("step_async")
        if self._autoreset_due():
            self._pending = _PendingStep(result=self._autoreset())
            return
        images = self.mdp.advance(actions)  # (N, 3, H, W) at the terminal step, else None
        if images is None:
            zeros = torch.zeros(self.num_envs, dtype=torch.float32)
            self._pending = _PendingStep(result=self._step_result(zeros, None))
            return
        if self._scorer is None:  # no clone: `images` is fresh, and the caller gets it only once it is scored
            self._scorer = AsyncRewardScorer(self.mdp.reward_fn, clone=False)
        prompts = list(self.mdp.prompts)
        scores = {
            key: self._scorer.submit(images, prompts, reward_fn)
            for key, reward_fn in self.mdp.terminal_scorers().items()
        }
        self._pending = _PendingStep(images=images, prompts=prompts, scores=scores)

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
        outcome = self.mdp.terminal_outcome(pending.images, scores, pending.prompts)
        return self._step_result(outcome.rewards, outcome)

    def _check_open(self, call: str) -> None:
        if self.closed:
            raise ClosedEnvironmentError(f"{call}() called on a closed env")

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
        falses = torch.zeros(self.num_envs, dtype=torch.bool)
        rewards = self._rewards(torch.zeros(self.num_envs, dtype=torch.float32))
        return observation, rewards, self._array(falses), self._array(falses), info

    def _step_result(self, rewards: torch.Tensor, outcome: TerminalOutcome | None) -> StepResult:
        terminated = torch.full((self.num_envs,), self.mdp.terminated, dtype=torch.bool)
        truncated = torch.zeros(self.num_envs, dtype=torch.bool)
        info = self._info()
        if outcome is not None:
            info["final_images"] = self._array(outcome.final_images)  # (N, 3, H, W)
            info["_final_images"] = self._array(torch.ones(self.num_envs, dtype=torch.bool))
            for key, scores in outcome.scores.items():
                applies = outcome.applies[key]  # (N,) bool
                if bool(applies.any()):  # NaN where the scorer cannot score the prompt; absent if nowhere
                    info[key], info[f"_{key}"] = self._array(scores), self._array(applies)
        return self._observation(), self._rewards(rewards), self._array(terminated), self._array(truncated), info

    # ------------------------------------------------------------------------------------ the array backend
    def _array(self, value: torch.Tensor) -> np.ndarray | torch.Tensor:
        """A tensor in this env's array backend: a numpy copy, or a tensor on the env's device."""
        if self.array_backend == "torch":
            return value.to(self.device)
        return value.detach().cpu().numpy().copy()

    def _rewards(self, rewards: torch.Tensor) -> np.ndarray | torch.Tensor:
        """Rewards ``(N,)``: float64 numpy (as ``SyncVectorEnv``), or float32 on the device."""
        rewards = self._array(rewards.float())
        return rewards.astype(np.float64) if isinstance(rewards, np.ndarray) else rewards

    def _observation(self) -> dict[str, np.ndarray | torch.Tensor]:
        return {key: self._array(value) for key, value in self.mdp.observation().items()}

    def _info(self) -> dict[str, Any]:
        """The info entries of every step: the goal prompts, with Gymnasium's ``_prompt`` mask."""
        return {
            "prompt": prompt_array(self.mdp.prompts),
            "_prompt": self._array(torch.ones(self.num_envs, dtype=torch.bool)),
        }

    def close_extras(self, **kwargs: Any) -> None:
        """Stop the reward scorer's worker thread (after the scores already queued); a pending step is dropped."""
        self._pending = None
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def compute_reward(self, achieved_goal, desired_goal, info=None) -> np.ndarray | torch.Tensor:
        """Vectorised goal-conditioned reward: goals ``(B, G)`` -> ``(B,)`` float32, numpy or a tensor on the device."""
        return self._array(self.mdp.compute_reward(achieved_goal, desired_goal))

    def render(self):
        if self.render_mode is None:
            return None
        return self.mdp.render()

"""The denoising MDP, batched: one implementation behind the single env and the native vector env.

State: the goal prompt ``c``, the latent ``x_t`` and the timestep ``t``. Action: the next latent ``x_{t-1}``.
The transition is deterministic (the next latent *is* the action); the reward is 0 until the last step of
the scheduler's schedule, where it is the reward model's score of the decoded image against the goal.
All ``N`` episodes of a batch run in lockstep (every episode has the same ``T``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from diffusion_gym.env_config import EnvConfig, _is_int, check_int
from diffusion_gym.goals import GoalCodec
from diffusion_gym.images import to_uint8
from diffusion_gym.models import DiffusionModel, load_model
from diffusion_gym.prompts import check_prompt_list, check_prompt_text, resolve_prompts
from diffusion_gym.rewards import RewardFn, check_reward_prompt, make_reward, reward_can_score, validate_reward


def check_render_mode(render_mode: object, render_modes: Sequence[str]) -> str | None:
    """``render_mode`` if it is None or one of the env's ``render_modes``, else ``ValueError`` naming them."""
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be one of {render_modes} or None, got {render_mode!r}")
    return render_mode


SINGLE_ENV_OPTIONS_HINT = "The vector env's reset takes 'prompts' (one per sub-env); this single env takes 'prompt'"


def check_reset_options(options: object, known: dict[str, str], hint: str = "") -> dict[str, object]:
    """The ``reset`` options as a dict (``None``: empty); ``TypeError``/``ValueError`` for a non-dict or an unknown key.

    ``known`` maps each option this env takes to what it is (for the message); ``hint`` is added to the message
    of an unknown key.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"reset options must be a dict or None, got {type(options).__name__}: {options!r}")
    unknown = sorted(str(key) for key in options if key not in known)
    if unknown:
        takes = ", ".join(f"{key!r} ({what})" for key, what in known.items())
        raise ValueError(f"unknown reset option(s) {', '.join(map(repr, unknown))}; this env takes {takes}. {hint}")
    return dict(options)


def check_prompt_option(where: str, prompt: object) -> str:
    """A prompt given in the ``reset`` options (``where``: e.g. ``"options['prompt']"``) must be a ``str`` of Unicode
    text (:func:`~diffusion_gym.prompts.check_prompt_text`)."""
    return check_prompt_text(prompt, where)


SEED_FORMS = "an int >= 0 or None"


def check_seed(seed: object, where: str = "seed", forms: str = SEED_FORMS) -> int | None:
    """``seed`` as an ``int`` (or ``None``) if it is an integer >= 0 (a numpy integer too, a bool not); else an error.

    The single and the vector env check every seed here, so both refuse the same seeds with the same message:
    ``TypeError`` for a non-integer (``True``, ``1.5``, ``"3"``), ``ValueError`` for a negative one. ``where`` names
    the seed (``"seed"``, ``"seed[1]"``), ``forms`` says what the env's ``reset`` takes.
    """
    if seed is None:
        return None
    if not _is_int(seed):
        raise TypeError(f"{where} must be {forms}; got {type(seed).__name__}: {seed!r}")
    if seed < 0:
        raise ValueError(f"{where} must be {forms}; got {type(seed).__name__}: {seed!r}")
    return int(seed)


class TerminalOutcome(NamedTuple):
    """What the terminal step of ``N`` episodes produced, besides the observation."""

    rewards: torch.Tensor  # (N,) float32 CPU: the env's reward
    final_images: torch.Tensor  # (N, 3, H, W) in [0, 1]: the decoded x_0
    scores: dict[str, torch.Tensor]  # the world's extra scores by key, (N,) float32 CPU, NaN where they do not apply
    applies: dict[str, torch.Tensor]  # the same keys, (N,) bool: where the score applies (its scorer can parse)


class DiffusionMDP:
    """``N`` denoising episodes advanced together. Tensors live on ``config.device``."""

    def __init__(self, config: EnvConfig, num_envs: int):
        num_envs = check_int("num_envs", num_envs, minimum=1)
        config = config.checked()
        self.config = config
        self.num_envs = num_envs
        self.model: DiffusionModel = load_model(config.model, config.device, config.dtype)
        world = self.model.world

        reward = config.reward if config.reward is not None else _required(world.default_reward, "reward", config.model)
        self.reward_name = validate_reward(reward)
        self.reward_fn = make_reward(self.reward_name, self.model.device)
        # Extra scores reported in info at termination, e.g. the gold score while optimising a proxy; each is
        # reported only for the prompts its scorer can score (reward_can_score).
        self.extra_score_names = {
            key: validate_reward(name)
            for key, name in (("gold_score", world.gold_reward), ("proxy_score", world.proxy_reward))
            if name is not None
        }

        self.codec = GoalCodec(config.max_prompt_bytes, self.model.latent_shape)
        self.prompt_pool = resolve_prompts(
            config.prompts if config.prompts is not None else _required(world.default_prompts, "prompts", config.model)
        )
        for prompt in self.prompt_pool:
            self.check_prompt(prompt)

        # A scheduler of our own: set_timesteps mutates it, and the loaded model is shared within the process.
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(self.model.scheduler.config)
        steps = config.num_inference_steps if config.num_inference_steps is not None else world.num_inference_steps
        check_int("num_inference_steps", steps, minimum=1)
        train_steps = self.scheduler.config.num_train_timesteps
        if steps > train_steps:
            raise ValueError(
                f"num_inference_steps={steps} is more than the {train_steps} timesteps the model was trained on "
                f"(the scheduler's num_train_timesteps)"
            )
        self.scheduler.set_timesteps(steps)
        self.timesteps = self.scheduler.timesteps.clone()  # (T,) descending
        self.num_steps = len(self.timesteps)
        self.init_noise_sigma = float(self.scheduler.init_noise_sigma)

        self._image_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.step_index: int | None = None  # None: reset needed
        self.latents: torch.Tensor | None = None
        self._unconditional_embedding: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------------- spaces
    def single_observation_space(self) -> spaces.Dict:
        bound = self.config.latent_bound
        goal_low, goal_high = self.codec.bounds(bound)
        num_tokens = self.model.max_prompt_tokens * self.config.max_prompt_chunks
        embed_dim = self.model.text_encoder.config.hidden_size
        return spaces.Dict(
            {
                "latent": spaces.Box(-bound, bound, self.model.latent_shape, np.float32),
                "timestep": spaces.Box(0, self.scheduler.config.num_train_timesteps, (1,), np.int64),
                "prompt_embedding": spaces.Box(-np.inf, np.inf, (num_tokens, embed_dim), np.float32),
                "desired_goal": spaces.Box(goal_low, goal_high, dtype=np.float32),
                "achieved_goal": spaces.Box(goal_low, goal_high, dtype=np.float32),
            }
        )

    def single_action_space(self) -> spaces.Box:
        bound = self.config.latent_bound
        return spaces.Box(-bound, bound, self.model.latent_shape, np.float32)

    # ----------------------------------------------------------------------------------------- prompts
    def check_prompt(self, prompt: str) -> None:
        """Raise for a prompt that cannot be a goal: not a lossless goal (empty, too many bytes or tokens), or one
        the env's reward cannot score (e.g. a sentence outside the Shapes gold scorer's grammar)."""
        self.codec.prompt_bytes(prompt)
        num_chunks = self.model.count_prompt_chunks(prompt)
        if num_chunks > self.config.max_prompt_chunks:
            raise ValueError(
                f"prompt needs {num_chunks} windows of {self.model.max_prompt_tokens} tokens, but the text encoder "
                f"of {self.config.model!r} takes at most {self.model.max_prompt_tokens} tokens and the env uses "
                f"max_prompt_chunks={self.config.max_prompt_chunks}; truncating it would break the lossless goal "
                f"(raise max_prompt_chunks to encode it in windows): {prompt!r}"
            )
        check_reward_prompt(self.reward_name, prompt)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings ``(B, S, D)`` as the env encodes goals (``S`` = tokens x ``max_prompt_chunks``).

        No goal checks: ``encode_text([""])`` is the unconditional embedding of classifier-free guidance.
        """
        return self.model.encode_prompts(prompts, self.config.max_prompt_chunks).float()

    def sample_start(self, rng: np.random.Generator, prompt: str | None) -> tuple[torch.Tensor, str]:
        """One episode's start from one RNG: ``x_T`` ``(C, H, W)`` on the CPU and its prompt.

        The single env and each sub-env of the vector env draw from their own RNG through this one
        function, so that the same seed gives the same episode in both. A given ``prompt`` must have passed
        :meth:`check_prompt` already (the envs check every option before they draw anything).
        """
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        noise = torch.randn(self.model.latent_shape, generator=generator) * self.init_noise_sigma  # (C, H, W)
        if prompt is None:
            prompt = self.prompt_pool[int(rng.integers(len(self.prompt_pool)))]
        return noise, prompt

    # ----------------------------------------------------------------------------------------- dynamics
    def reset(self, initial_latents: torch.Tensor, prompts: list[str]) -> None:
        """Start ``N`` episodes from latents ``(N, C, H, W)`` and prompts (one text-encoder call)."""
        if len(prompts) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} prompts, got {len(prompts)}")
        for prompt in prompts:
            self.check_prompt(prompt)
        self.prompts = list(prompts)
        self.prompt_embeddings = self.encode_text(self.prompts)  # (N, S, D)
        self.desired_goals = self.codec.encode(self.prompts).to(self.model.device)  # (N, G)
        self.achieved_goals = self.desired_goals.clone()  # flag 0: nothing generated yet
        self.latents = initial_latents.to(self.model.device, torch.float32)  # (N, C, H, W)
        self.step_index = 0

    @property
    def terminated(self) -> bool:
        return self.step_index == self.num_steps

    def check_action(self, action: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Validate a batch of actions ``(N, C, H, W)``; returns a copy as float32 on the env's device.

        Out-of-bound and non-finite actions are errors, never clipped: either is almost surely a bug in the
        policy (pixels instead of latents, unscaled latents, a diverged model), and hiding it would poison
        the training data. The copy is detached: an action that requires grad is taken by value (the env is not
        differentiable, and its observations never carry a ``grad_fn``).
        """
        if not isinstance(action, torch.Tensor):
            array = np.asarray(action)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"action must be a torch.Tensor or numpy array of floats, got dtype {array.dtype}")
            action = torch.from_numpy(array)
        if not action.is_floating_point():
            raise TypeError(f"action must have a floating-point dtype, got {action.dtype}")
        expected = (self.num_envs, *self.model.latent_shape)
        if tuple(action.shape) != expected:
            raise ValueError(f"action has shape {tuple(action.shape)}, expected {expected} (the next latent)")
        action = action.detach().to(self.model.device, torch.float32, copy=True)  # the env owns its state
        finite = torch.isfinite(action).flatten(1).all(dim=1)  # (N,)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"action contains NaN or inf (env indices {bad}); refusing to step")
        bound = self.config.latent_bound
        outside = action.abs().flatten(1).amax(dim=1) > bound  # (N,)
        if bool(outside.any()):
            bad = torch.nonzero(outside).flatten().tolist()
            raise ValueError(
                f"action leaves the latent bounds [-{bound}, {bound}] (env indices {bad}, max |x| = "
                f"{action.abs().max().item():.3g}); latents are expected to have about unit variance"
            )
        return action

    def step(self, action: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, TerminalOutcome | None]:
        """Advance all episodes by one step; returns rewards ``(N,)`` and, at the terminal step, its outcome.

        The terminal step is three parts: :meth:`advance` (the transition and the decode), every function of
        :meth:`terminal_scorers` on the images, then :meth:`terminal_outcome`. Here they run in a row; the vector
        env's ``step_async`` runs the middle part on a worker thread.
        """
        images = self.advance(action)
        if images is None:
            return torch.zeros(self.num_envs, dtype=torch.float32), None
        scores = {
            key: reward_fn(images, self.prompts).float().cpu() for key, reward_fn in self.terminal_scorers().items()
        }
        outcome = self.terminal_outcome(images, scores, self.prompts)
        return outcome.rewards, outcome

    def advance(self, action: torch.Tensor | np.ndarray) -> torch.Tensor | None:
        """The transition of all episodes (the next latent is the action); nothing is scored.

        Every check runs before the state changes: a refused action leaves the episodes as they were. Returns
        ``None`` before the last step; at the last step, the final images ``(N, 3, H, W)`` in [0, 1] (decoded, and
        the achieved goals updated), for :meth:`terminal_scorers` to score.
        """
        if self.step_index is None:
            raise ResetNeeded("step() called before reset()")
        if self.terminated:
            raise ResetNeeded("the episode has terminated; call reset() before step()")
        self.latents = self.check_action(action)
        self.step_index += 1
        if not self.terminated:
            return None
        images = self.decode(self.latents)  # (N, 3, H, W)
        self.achieved_goals = self.codec.encode(self.prompts, self.latents)
        return images

    def terminal_scorers(self) -> dict[str, RewardFn]:
        """The scores of the terminal step, by key: ``"reward"`` (the env's reward) and each extra score of the
        world (``gold_score``, ``proxy_score``) whose reward differs from it (one that is the reward reuses it).
        An extra scorer scores only the prompts it can score and gives NaN for the others."""
        scorers: dict[str, RewardFn] = {"reward": self.reward_fn}
        for key, name in self.extra_score_names.items():
            if name != self.reward_name:
                scorers[key] = ScoreWhereApplicable(name, make_reward(name, self.model.device))
        return scorers

    def terminal_outcome(
        self, images: torch.Tensor, scores: dict[str, torch.Tensor], prompts: Sequence[str]
    ) -> TerminalOutcome:
        """The :class:`TerminalOutcome` of final images ``(N, 3, H, W)`` for ``prompts``, from the ``(N,)`` float32
        CPU scores of every :meth:`terminal_scorers` key."""
        rewards = scores["reward"]
        extra_scores, applies = {}, {}
        for key, name in self.extra_score_names.items():
            if name == self.reward_name:  # the env's reward: checked at reset, it applies to every prompt
                extra_scores[key], applies[key] = rewards, torch.ones(len(prompts), dtype=torch.bool)
            else:
                extra_scores[key] = scores[key]
                applies[key] = torch.tensor([reward_can_score(name, prompt) for prompt in prompts], dtype=torch.bool)
        return TerminalOutcome(rewards, images, extra_scores, applies)

    def observation(self) -> dict[str, torch.Tensor]:
        """The batched observation: every value a tensor on the env's device."""
        if self.terminated:
            timestep = torch.zeros(self.num_envs, 1, dtype=torch.int64)
        else:
            timestep = self.timesteps[self.step_index].repeat(self.num_envs, 1).to(torch.int64)  # (N, 1)
        return {
            "latent": self.latents,
            "timestep": timestep.to(self.model.device),
            "prompt_embedding": self.prompt_embeddings,
            "desired_goal": self.desired_goals,
            "achieved_goal": self.achieved_goals,
        }

    # ----------------------------------------------------------------------------------------- rewards
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents ``(B, C, H, W)`` to 8-bit images ``(B, 3, H, W)`` in [0, 1], through a small cache.

        The cache (keyed by the latent's bytes) makes ``compute_reward`` on a terminal achieved goal see
        exactly the image ``step`` scored, whatever batch it comes in, and makes relabeling cheap. It keeps the
        ``image_cache_size`` most recently used images (0: no cache).
        """
        keys = [row.numpy().tobytes() for row in latents.detach().float().cpu()]
        missing = [i for i, key in enumerate(keys) if key not in self._image_cache]
        if missing:
            decoded = self.model.decode_latents(latents[missing].to(self.model.device))  # (M, 3, H, W)
            for i, image in zip(missing, decoded, strict=True):
                self._image_cache[keys[i]] = to_uint8(image)
        images = []
        for key in keys:
            self._image_cache.move_to_end(key)
            images.append(self._image_cache[key])
        while len(self._image_cache) > self.config.image_cache_size:
            self._image_cache.popitem(last=False)
        return torch.stack(images).float().div(255).to(self.model.device)  # (B, 3, H, W)

    def share_image_cache(self, other: DiffusionMDP) -> None:
        """Decode through ``other``'s image cache from now on (sibling envs of one run, same config): then
        ``compute_reward`` on either sees exactly the images both scored, and the cache evicts as one env's would."""
        self._image_cache = other._image_cache

    def compute_reward(self, achieved_goal, desired_goal) -> torch.Tensor:
        """Vectorised goal-conditioned reward ``(B,)`` float32 on the CPU (see :mod:`diffusion_gym.goals`).

        Both goals are checked (:meth:`GoalCodec.check_goals`): a NaN, a generated flag other than 0 or 1, or
        prompt bytes that are not UTF-8 are errors, and so is a desired prompt the env's reward cannot score.
        """
        achieved = torch.as_tensor(achieved_goal, dtype=torch.float32)
        desired = torch.as_tensor(desired_goal, dtype=torch.float32)
        if achieved.shape != desired.shape or achieved.ndim != 2 or achieved.shape[1] != self.codec.size:
            raise ValueError(
                f"compute_reward expects goals of shape (B, {self.codec.size}), got {tuple(achieved.shape)} "
                f"and {tuple(desired.shape)}"
            )
        self.codec.check_goals(achieved, "achieved_goal")
        desired_prompts = self.codec.check_goals(desired, "desired_goal")
        rewards = torch.zeros(achieved.shape[0], dtype=torch.float32)
        generated = self.codec.generated(achieved).cpu()
        if bool(generated.any()):
            rows = torch.nonzero(generated).flatten()
            prompts = [desired_prompts[i] for i in rows.tolist()]
            for prompt in prompts:
                check_reward_prompt(self.reward_name, prompt)
            images = self.decode(self.codec.final_latents(achieved[rows.to(achieved.device)]))
            rewards[rows] = self.reward_fn(images, prompts).float().cpu()
        return rewards

    def render(self) -> np.ndarray:
        """The decoded current latents as uint8 images ``(N, H, W, 3)``."""
        if self.latents is None:
            raise ResetNeeded("render() called before reset()")
        images = self.model.decode_latents(self.latents)  # (N, 3, H, W)
        return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)

    @property
    def unconditional_embedding(self) -> torch.Tensor:
        """The empty prompt's embedding ``(1, S, D)``, computed once: classifier-free guidance's null condition."""
        if self._unconditional_embedding is None:
            self._unconditional_embedding = self.encode_text([""])
        return self._unconditional_embedding


class ScoreWhereApplicable:
    """A world's extra score (e.g. the Shapes gold score) on the prompts its reward can score, NaN on the others:
    ``fn(images, prompts) -> (B,)`` float32 CPU."""

    def __init__(self, name: str, reward_fn: RewardFn):
        self.name = name
        self.reward_fn = reward_fn

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = torch.full((len(prompts),), float("nan"), dtype=torch.float32)
        rows = [i for i, prompt in enumerate(prompts) if reward_can_score(self.name, prompt)]
        if rows:
            scores[rows] = self.reward_fn(images[rows], [prompts[i] for i in rows]).float().cpu()
        return scores


class DiffusionHandle:
    """What a policy or an agent may use of a ``DiffusionT2I`` env: the public interface between the two.

    ``env.unwrapped.diffusion`` of the single and the vector env (reach it through any wrapper with
    ``env.unwrapped``). Agents drive episodes through the env's own ``reset``/``step`` (so that wrappers see
    them) and read everything else here, never the env's internals:

    * the model: ``unet`` (frozen; policies add adapters to it), ``vae``, ``text_encoder``, ``tokenizer``,
      ``latent_shape`` ``(C, H, W)``, ``device``, ``dtype``, and ``world`` (the world's metadata: guidance scale,
      eta, default reward and prompt sets, :class:`diffusion_gym.models.WorldInfo`);
    * the schedule: ``scheduler`` (the env's DDIM scheduler, already set to its schedule: read it, never call
      ``set_timesteps`` on it), ``timesteps`` ``(T,)`` descending and ``num_inference_steps`` ``T``;
    * prompts: ``prompt_pool`` (the prompts ``reset`` draws goals from), ``encode_prompts`` (goal prompts, checked
      as ``reset`` checks them) and ``unconditional_embedding`` (classifier-free guidance's null prompt);
    * goals and rewards: ``codec`` (:class:`diffusion_gym.goals.GoalCodec`, to relabel a goal) and
      ``compute_reward`` (the goal-conditioned reward as a float32 CPU tensor, whatever the env returns);
    * ``new_vector_env(num_envs)``: another vector env with this env's arguments (and array backend), sharing its
      loaded model and decoded-image cache (e.g. to sample one batch while another batch's reward is scored).

    Tensors in, tensors out: this interface takes and returns torch tensors whatever the env's array backend.
    """

    def __init__(self, mdp: DiffusionMDP, vector_env_class: Callable[..., Any], array_backend: str = "numpy"):
        self._mdp = mdp
        self._vector_env_class = vector_env_class  # new_vector_env's: given by the env (core imports no env)
        self._array_backend = array_backend  # the backend of new_vector_env's envs

    # ----------------------------------------------------------------------------------------- the model
    @property
    def model(self) -> DiffusionModel:
        return self._mdp.model

    @property
    def unet(self) -> torch.nn.Module:
        return self._mdp.model.unet

    @property
    def vae(self) -> torch.nn.Module:
        return self._mdp.model.vae

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self._mdp.model.text_encoder

    @property
    def tokenizer(self):
        return self._mdp.model.tokenizer

    @property
    def world(self):
        return self._mdp.model.world

    @property
    def device(self) -> torch.device:
        return self._mdp.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self._mdp.model.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._mdp.model.latent_shape

    @property
    def embedding_dim(self) -> int:
        """``D`` of a prompt embedding ``(S, D)``."""
        return int(self._mdp.model.text_encoder.config.hidden_size)

    # ----------------------------------------------------------------------------------------- the schedule
    @property
    def scheduler(self):
        return self._mdp.scheduler

    @property
    def timesteps(self) -> torch.Tensor:
        """``(T,)`` int64, descending: the scheduler timestep of each step of an episode."""
        return self._mdp.timesteps

    @property
    def num_inference_steps(self) -> int:
        return self._mdp.num_steps

    # ----------------------------------------------------------------------------------------- prompts
    @property
    def prompt_pool(self) -> tuple[str, ...]:
        return tuple(self._mdp.prompt_pool)

    def encode_prompts(self, prompts: list[str] | tuple[str, ...]) -> torch.Tensor:
        """The frozen text encoder's hidden states ``(B, S, D)`` for a list or tuple of ``B`` goal prompts (each checked
        as ``reset`` does). A bare ``str`` is a ``TypeError``: one prompt goes in a list."""
        prompts = check_prompt_list(prompts, "prompts")
        for prompt in prompts:
            self._mdp.check_prompt(prompt)
        return self._mdp.encode_text(prompts)

    @property
    def unconditional_embedding(self) -> torch.Tensor:
        """The empty prompt's embedding ``(1, S, D)``: the null condition of classifier-free guidance."""
        return self._mdp.unconditional_embedding

    # ----------------------------------------------------------------------------------------- goals, rewards
    @property
    def codec(self) -> GoalCodec:
        return self._mdp.codec

    def compute_reward(self, achieved_goal, desired_goal) -> torch.Tensor:
        """The goal-conditioned reward of goals ``(B, G)``: ``(B,)`` float32 on the CPU."""
        return self._mdp.compute_reward(achieved_goal, desired_goal)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, H, W)`` -> 8-bit images ``(B, 3, H, W)`` as floats in [0, 1] (what the reward sees)."""
        return self._mdp.model.decode_latents(latents)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The terminal scores of images ``(B, 3, H, W)`` in [0, 1]: ``"reward"`` and the world's extra scores
        (``gold_score``, ``proxy_score``), each ``(B,)`` float32 on the CPU; an extra score is NaN for a prompt its
        scorer cannot score (the reward refuses such a prompt). A bare ``str`` is a ``TypeError``."""
        prompts = check_prompt_list(prompts, "prompts")
        scores = {key: fn(images, prompts).float().cpu() for key, fn in self._mdp.terminal_scorers().items()}
        outcome = self._mdp.terminal_outcome(images, scores, prompts)
        return {"reward": outcome.rewards, **outcome.scores}

    # ----------------------------------------------------------------------------------------- more envs
    def new_vector_env(self, num_envs: int, array_backend: str | None = None):
        """A new :class:`~diffusion_gym.vector_env.DiffusionT2IVectorEnv` with this env's arguments, sharing its
        (once-per-process) model and its decoded-image cache; it has its own episodes, RNGs and reward scorer.

        ``array_backend``: ``"numpy"`` or ``"torch"``; ``None``: this env's (``"numpy"`` for the single env).
        """
        config = {field.name: getattr(self._mdp.config, field.name) for field in dataclasses.fields(self._mdp.config)}
        backend = self._array_backend if array_backend is None else array_backend
        env = self._vector_env_class(num_envs, **config, array_backend=backend)
        env.mdp.share_image_cache(self._mdp)
        return env


def _required(value, argument: str, model: str):
    if value is None:
        raise ValueError(f"model {model!r} has no default {argument}; pass {argument}=... to gym.make")
    return value

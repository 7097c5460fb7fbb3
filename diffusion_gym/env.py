"""``DiffusionT2I-v1``: the single (unbatched) environment."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from diffusion_gym.core import (
    SINGLE_ENV_OPTIONS_HINT,
    DiffusionHandle,
    DiffusionMDP,
    EnvConfig,
    check_prompt_option,
    check_render_mode,
    check_reset_options,
    check_seed,
)
from diffusion_gym.images import to_uint8_hwc


class DiffusionT2IEnv(gym.Env):
    r"""
    ## Description

    The denoising process of a text-to-image latent diffusion model (Stable Diffusion or the embedded
    miniature "Shapes" world) as a goal-conditioned Markov decision process, as in DDPO (Black et al.)
    and DPOK (Fan et al.). An episode generates one image for one goal prompt: it starts from Gaussian noise
    :math:`x_T` and, over the ``T`` timesteps of a DDIM schedule, the agent chooses each next latent.

    The state is the prompt :math:`c`, the latent :math:`x_t` and the timestep :math:`t`; the action is
    :math:`x_{t-1}`. The transition is deterministic: the next latent is the action. A diffusion policy
    (the pretrained UNet plus a DDIM step with :math:`\eta > 0`) makes each action Gaussian; its exact
    log-probability is :func:`diffusion_gym.ddim.ddim_step_log_prob`.

    ## Action Space

    ``Box(-latent_bound, latent_bound, (C, H, W), float32)``: the next latent. ``(4, 8, 8)`` for the Shapes
    world, ``(4, 64, 64)`` for Stable Diffusion v1.5 at 512 px. Actions are validated, never corrected:
    a wrong shape or a non-floating dtype raises ``ValueError``/``TypeError``; a NaN or inf entry raises
    ``ValueError``; an entry outside ``[-latent_bound, latent_bound]`` (default 50: latents have about unit
    variance) raises ``ValueError``. Floating dtypes other than float32 are cast to float32. An action is
    numpy or torch (any device); the env copies its values: a tensor that requires grad is taken without its
    graph (the env is not differentiable, and no observation carries a ``grad_fn``). Every check runs before
    the state changes, so a refused ``step`` (or ``reset``) leaves the env as it was.

    ## Observation Space

    A ``Dict``:

    | key                | shape              | dtype   | meaning                                                |
    |--------------------|--------------------|---------|--------------------------------------------------------|
    | `latent`           | `(C, H, W)`        | float32 | the current latent :math:`x_t`                          |
    | `timestep`         | `(1,)`             | int64   | the scheduler timestep :math:`t` of `latent` (0 at the end) |
    | `prompt_embedding` | `(S, D)`           | float32 | the frozen text encoder's hidden states for the goal;  |
    |                    |                    |         | `S` = 77 x `max_prompt_chunks` for SD                  |
    | `desired_goal`     | `(G,)`             | float32 | the goal prompt (see below)                            |
    | `achieved_goal`    | `(G,)`             | float32 | the prompt and, at the end, the generated :math:`x_0`  |

    Goals are flat vectors ``[prompt as UTF-8 bytes, zero padded to max_prompt_bytes | generated flag |
    final latent]`` (:class:`diffusion_gym.goals.GoalCodec`): lossless, so any reward model can score any
    (relabeled) goal, e.g. one sentence of a longer prompt, and both goals share one space as SB3's HER needs.

    ## Rewards

    0 on every step but the last. On the last step, the reward model's score of the decoded image
    :math:`x_0` against the goal prompt. At every step ``reward == compute_reward(obs["achieved_goal"],
    obs["desired_goal"], info)``: ``compute_reward`` is vectorised over a batch, decodes the achieved goal's
    latent (through a cache) and scores it against the desired goal's prompt, and gives 0 where nothing has
    been generated yet. It checks both goals: a NaN or inf, a generated flag other than exactly 0 or 1, prompt
    bytes that are not integers in [0, 255] or not UTF-8, or a desired prompt the reward cannot score raise
    ``ValueError``.

    The reward works on every prompt the env accepts: a prompt the reward cannot score (a reward may declare
    which prompts it can score, e.g. ``shapes-gold`` parses the Shapes grammar and cannot score
    "a photo of a cat") is refused when the env is made (for the prompt set) or at ``reset``, never at the
    last step.

    ## Starting State

    :math:`x_T \sim \mathcal N(0, \sigma_{init}^2 I)` drawn from the env's seeded RNG; the goal prompt drawn
    uniformly from the prompt set, or given by ``reset(options={"prompt": ...})``. ``options`` is a dict (or
    ``None``) whose only key is ``"prompt"`` (a ``str``); any other key (e.g. the vector env's ``"prompts"``) or
    type is an error, and the prompt is checked before anything is drawn. ``seed`` is an int >= 0 (a numpy integer
    too) or ``None``; ``True``, ``1.5``, ``"3"`` (``TypeError``) and ``-1`` (``ValueError``) are refused with the
    vector env's message (:func:`diffusion_gym.core.check_seed`).

    ## Episode End

    ``terminated`` is True after ``num_inference_steps`` steps (the end of the DDIM schedule). There is no
    truncation. Stepping a terminated episode, or stepping before ``reset``, raises ``ResetNeeded``.
    At termination, ``info`` holds ``final_image`` (``(H, W, 3)`` uint8) and, when the model's world defines
    them, ``gold_score`` and ``proxy_score`` (e.g. the Shapes world's exact gold scorer and its learned CLIP
    proxy), so training curves can show over-optimisation. Each is there only where it applies: a prompt its
    scorer cannot score (the gold scorer on "a photo of a cat", with ``reward="shapes-clip"``) has no
    ``gold_score`` in ``info`` (the vector env: NaN with the ``_gold_score`` mask False). A reward model that
    raises at the last step leaves the episode terminated (the single env needs ``reset()``; the vector env
    resets on its next step).

    ## Arguments

    ```python
    import gymnasium as gym
    import diffusion_gym

    env = gym.make("DiffusionT2I-v1", model="shapes", reward="shapes-gold", prompts="shapes-train")
    ```

    * ``model``: ``"shapes"`` (default, shipped), a ``save_pretrained`` pipeline folder (a ``str`` or a path
      object), or a diffusers hub id. The folder's own ``scheduler/scheduler_config.json`` is read: a
      ``clip_sample=True`` scheduler is refused (diffusers' pipeline would rewrite the flag with a warning); so
      is a tokenizer whose ``model_max_length`` is unset or longer than the text encoder's positions, and a
      folder without one of ``tokenizer/``, ``text_encoder/``, ``unet/``, ``vae/``, ``scheduler/``.
    * ``reward``: a registered reward name or weighted sum (``"imagereward:1.0,aesthetic:0.1"``); ``None``
      (default): the world's default reward.
    * ``prompts``: a registered prompt set name, one prompt, or a list or tuple of prompts; ``None`` (default):
      the world's. A string that looks like a set name (one word of lowercase letters and digits joined by
      ``-`` or ``_``, e.g. the typo ``"shapes-trian"``) but is not registered is an error naming the registered
      sets; a one-word prompt of that form goes in a list (``["self-portrait"]``).
    * ``num_inference_steps``: the number of DDIM steps ``T``, from 1 to the scheduler's training steps (1000
      for SD); ``None`` (default): the world's (50 for SD).
    * ``device``: where the frozen model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a
      ``torch.device``); a device this machine lacks (``"cuda"`` without CUDA) is an error when the env is made.
    * ``dtype``: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (or that torch dtype).
    * ``latent_bound``: the action and latent bound (default 50.0, a sanity limit: latents have about unit
      variance, but guided DDIM steps of a real model reach |x| > 10).
    * ``max_prompt_bytes``: the prompt capacity of a goal vector (default 1024 UTF-8 bytes).
    * ``image_cache_size``: decoded images kept for ``compute_reward`` (default 256; 0: none, then
      ``compute_reward`` decodes again).
    * ``max_prompt_chunks``: prompts longer than the text encoder's window (77 tokens for SD) are refused by
      default (1); with ``k > 1`` they are encoded in up to ``k`` windows of 77 tokens, concatenated, so
      ``prompt_embedding`` has ``S = 77 k`` rows (e.g. the HERD paper's 94-token forest prompt needs 2).
    * ``render_mode``: ``"rgb_array"`` renders the decoded current latent as ``(H, W, 3)`` uint8.

    Every argument is checked when the env is made, and a bad value is an error naming the argument, never
    replaced by a default: e.g. ``num_inference_steps=0`` or ``True``, ``reward=""``, ``image_cache_size=-1``,
    ``dtype="float8"``, ``num_envs=2.5``, ``prompts`` given as a set. Empty prompts, prompts with more tokens than
    the text encoder takes (silent truncation would break the lossless goal), prompts over ``max_prompt_bytes``
    and prompts the reward cannot score raise ``ValueError``. Unknown reward or model names raise
    ``UnknownRewardError``/``UnknownModelError``; a model folder that does not exist, ``FileNotFoundError``.
    Models load once per process (``diffusion_gym.models.load_model``).

    Every prompt (the prompt set, a reset option, ``diffusion.encode_prompts``, a goal) is a ``str`` of Unicode text:
    one with a lone surrogate code point (``"\ud800"``, which UTF-8 cannot encode) is a ``ValueError`` naming the
    prompt, and a bare ``str`` where a list of prompts is expected (``diffusion.encode_prompts("a cat")``) is a
    ``TypeError``: one prompt goes in a list.

    Checkers: ``gym.make`` returns the env itself (registered without Gymnasium's ``OrderEnforcing`` and
    ``PassiveEnvChecker`` wrappers: the env raises ``ResetNeeded`` itself), so that
    ``gymnasium.utils.env_checker.check_env(env)`` and Stable-Baselines3's
    ``stable_baselines3.common.env_checker.check_env(env)`` pass on what ``gym.make`` returns (with warnings about
    the latent's scale and the unbounded prompt embedding), and ``env.compute_reward`` is there. Gymnasium 1.x
    wrappers do not forward attributes: behind a wrapper (your own, or ``gym.make(..., disable_env_checker=False)``)
    call them on ``env.unwrapped``.

    ## Vectorized Environment

    ``gym.make_vec("DiffusionT2I-v1", num_envs=N, vectorization_mode="vector_entry_point")`` runs all ``N``
    episodes as one batch on the env's device (:class:`diffusion_gym.vector_env.DiffusionT2IVectorEnv`). It
    follows Gymnasium's vector conventions: numpy observations, rewards, terminations and truncations, and
    ``info`` entries with their ``_key`` masks, so Gymnasium's vector wrappers (``RecordEpisodeStatistics``,
    ``NormalizeReward``, ``DictInfoToList``, ``ClipReward``, ``NumpyToTorch``, ...) work on it. With
    ``array_backend="torch"`` it returns the same values as torch tensors on the env's device (what the agents
    use on a GPU). It also has Gymnasium's split step, ``step_async(actions)`` / ``step_wait()``: at the
    terminal step the reward is scored on a worker thread in between, so that the caller can sample another
    batch meanwhile. ``reset(seed=...)`` takes an int, ``N`` ints or ``None``; ``reset(options=...)`` takes
    ``"prompts"`` (``N`` prompts) or ``"prompt"`` (one for all). After ``close()``, ``step`` and ``reset`` raise
    ``ClosedEnvironmentError``.

    ## Version History

    * v1 (2026-12-04): the default Shapes world's fourth weights (v-prediction, zero terminal SNR, "trailing"
      DDIM steps: the first observation's timestep is 999, not 951, and every episode differs from v0's); the
      public interface for policies, ``env.unwrapped.diffusion`` (:class:`diffusion_gym.core.DiffusionHandle`),
      replaces the vector env's convenience attributes (``model``, ``scheduler``, ``timesteps``, ``codec``,
      ``encode_prompts``, ``unconditional_embedding``, ``make_sibling``). ``gym.make("DiffusionT2I-v0")`` raises
      Gymnasium's ``DeprecatedEnv``. Hardening (issue 19): the vector env returns numpy by default (Gymnasium's
      vector conventions, ``info["prompt"]`` with its ``_prompt`` mask) and torch tensors on the device with
      ``array_backend="torch"``; a prompt the reward cannot score is refused at construction or ``reset``, and
      ``gold_score``/``proxy_score`` are reported only where they apply; an unregistered set-like ``prompts``
      name is an error; actions that require grad are copied without their graph, and a refused ``step`` or
      ``reset`` changes nothing; every argument, reset option and seed is checked (no default replaces a bad
      value; ``model`` may be a path object); a closed vector env refuses ``step`` and ``reset``;
      ``compute_reward`` checks its goals; the model folder's own scheduler config is read (``clip_sample=True``
      refused) and its tokenizer checked. Issue 30: ``gym.make`` adds no wrapper (the env enforces the call order
      itself; SB3's ``check_env`` and ``env.compute_reward`` work on what it returns); both envs refuse the same
      seeds (a bool, a float, a negative int); a prompt that is not Unicode text is a ``ValueError`` naming it; a bare
      ``str`` is no list of prompts; DDIM's eta must be in [0, 1].
    * v0: Initial version (the Shapes world's first to third weights, epsilon-prediction on Stable Diffusion's
      schedule; from 2026-11-29 the fourth weights). Since issue 30, ``gym.make("DiffusionT2I-v0")`` (and
      ``gym.make_vec``) makes the v1 env with a ``UserWarning`` that lists what differs from v0
      (:data:`diffusion_gym.v0.V0_WARNING`): v0's own weights are no longer shipped, so v0 cannot keep its behaviour.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
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
    ):
        config = EnvConfig.from_arguments(locals())
        self.render_mode = check_render_mode(render_mode, self.metadata["render_modes"])
        self.mdp = DiffusionMDP(config, num_envs=1)
        self.diffusion = DiffusionHandle(self.mdp, _vector_env)  # the interface for policies (see DiffusionHandle)
        self.observation_space = self.mdp.single_observation_space()
        self.action_space = self.mdp.single_action_space()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        seed = check_seed(seed)  # as the vector env checks it: True or 1.5 is no seed
        options = check_reset_options(options, {"prompt": "one goal prompt"}, hint=SINGLE_ENV_OPTIONS_HINT)
        prompt = options.get("prompt")
        if prompt is not None:  # checked before anything is drawn: a refused reset changes nothing
            check_prompt_option("options['prompt']", prompt)
            self.mdp.check_prompt(prompt)
        super().reset(seed=seed)
        noise, prompt = self.mdp.sample_start(self.np_random, prompt)
        self.mdp.reset(noise[None], [prompt])  # (1, C, H, W)
        return self._observation(), {"prompt": prompt}

    def step(self, action):
        if not isinstance(action, torch.Tensor):
            action = np.asarray(action)
        if action.ndim != 3:
            raise ValueError(
                f"action has shape {tuple(action.shape)}, expected {self.action_space.shape} (the next latent)"
            )
        rewards, outcome = self.mdp.step(action[None])  # (1, C, H, W)
        terminated = self.mdp.terminated
        info: dict[str, Any] = {"prompt": self.mdp.prompts[0]}
        if outcome is not None:
            info["final_image"] = to_uint8_hwc(outcome.final_images[:1])[0]  # (H, W, 3)
            for key, scores in outcome.scores.items():
                if bool(outcome.applies[key][0]):  # absent where the world's scorer cannot score the prompt
                    info[key] = float(scores[0])
        return self._observation(), float(rewards[0]), terminated, False, info

    def compute_reward(self, achieved_goal, desired_goal, info=None):
        """Vectorised: goals ``(G,)`` give a float, goals ``(B, G)`` a ``(B,)`` float32 array."""
        achieved, desired = np.asarray(achieved_goal, np.float32), np.asarray(desired_goal, np.float32)
        if achieved.ndim == 1:
            return float(self.mdp.compute_reward(achieved[None], desired[None])[0])
        return self.mdp.compute_reward(achieved, desired).numpy()

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array' to gym.make")
            return None
        return self.mdp.render()[0]

    def _observation(self) -> dict[str, np.ndarray]:
        return {key: value[0].cpu().numpy().copy() for key, value in self.mdp.observation().items()}


def _vector_env(num_envs: int, **kwargs: Any):
    """A :class:`~diffusion_gym.vector_env.DiffusionT2IVectorEnv` (``diffusion.new_vector_env`` of a single env)."""
    from diffusion_gym.vector_env import DiffusionT2IVectorEnv

    return DiffusionT2IVectorEnv(num_envs, **kwargs)

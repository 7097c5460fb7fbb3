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
    check_reset_options,
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
    variance) raises ``ValueError``. Floating dtypes other than float32 are cast to float32.

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
    been generated yet.

    ## Starting State

    :math:`x_T \sim \mathcal N(0, \sigma_{init}^2 I)` drawn from the env's seeded RNG; the goal prompt drawn
    uniformly from the prompt set, or given by ``reset(options={"prompt": ...})``.

    ## Episode End

    ``terminated`` is True after ``num_inference_steps`` steps (the end of the DDIM schedule). There is no
    truncation. Stepping a terminated episode, or stepping before ``reset``, raises ``ResetNeeded``.
    At termination, ``info`` holds ``final_image`` (``(H, W, 3)`` uint8) and, when the model's world defines
    them, ``gold_score`` and ``proxy_score`` (e.g. the Shapes world's exact gold scorer and its learned CLIP
    proxy), so training curves can show over-optimisation.

    ## Arguments

    ```python
    import gymnasium as gym
    import diffusion_gym

    env = gym.make("DiffusionT2I-v1", model="shapes", reward="shapes-gold", prompts="shapes-train")
    ```

    * ``model``: ``"shapes"`` (default, shipped), a ``save_pretrained`` pipeline folder, or a diffusers hub id.
    * ``reward``: a registered reward name or weighted sum (``"imagereward:1.0,aesthetic:0.1"``); default: the
      world's default reward.
    * ``prompts``: a registered prompt set name, one prompt, or a list of prompts; default: the world's.
    * ``num_inference_steps``: the number of DDIM steps ``T``; default: the world's (50 for SD).
    * ``device``, ``dtype``: where the frozen model runs (``"cpu"``/``"cuda"``, ``"float32"``/``"float16"``).
    * ``latent_bound``: the action and latent bound (default 50.0, a sanity limit: latents have about unit
      variance, but guided DDIM steps of a real model reach |x| > 10).
    * ``max_prompt_bytes``: the prompt capacity of a goal vector (default 1024 UTF-8 bytes).
    * ``image_cache_size``: decoded images kept for ``compute_reward`` (default 256).
    * ``max_prompt_chunks``: prompts longer than the text encoder's window (77 tokens for SD) are refused by
      default (1); with ``k > 1`` they are encoded in up to ``k`` windows of 77 tokens, concatenated, so
      ``prompt_embedding`` has ``S = 77 k`` rows (e.g. the HERD paper's 94-token forest prompt needs 2).
    * ``render_mode``: ``"rgb_array"`` renders the decoded current latent as ``(H, W, 3)`` uint8.

    Empty prompts, prompts with more tokens than the text encoder takes (silent truncation would break the
    lossless goal) and prompts over ``max_prompt_bytes`` raise ``ValueError``. Unknown reward or model names
    raise ``UnknownRewardError``/``UnknownModelError``; a model folder that does not exist,
    ``FileNotFoundError``. Models load once per process (``diffusion_gym.models.load_model``).

    ## Vectorized Environment

    ``gym.make_vec("DiffusionT2I-v1", num_envs=N, vectorization_mode="vector_entry_point")`` runs all ``N``
    episodes as one batch on the env's device and returns torch tensors there
    (:class:`diffusion_gym.vector_env.DiffusionT2IVectorEnv`). It also has Gymnasium's split step,
    ``step_async(actions)`` / ``step_wait()``: at the terminal step the reward is scored on a worker thread
    in between, so that the caller can sample another batch meanwhile.

    ## Version History

    * v1 (2026-12-04): the default Shapes world's fourth weights (v-prediction, zero terminal SNR, "trailing"
      DDIM steps: the first observation's timestep is 999, not 951, and every episode differs from v0's); the
      public interface for policies, ``env.unwrapped.diffusion`` (:class:`diffusion_gym.core.DiffusionHandle`),
      replaces the vector env's convenience attributes (``model``, ``scheduler``, ``timesteps``, ``codec``,
      ``encode_prompts``, ``unconditional_embedding``, ``make_sibling``). ``gym.make("DiffusionT2I-v0")`` raises
      Gymnasium's ``DeprecatedEnv``.
    * v0: Initial version (the Shapes world's first to third weights, epsilon-prediction on Stable Diffusion's
      schedule).
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
        self.mdp = DiffusionMDP(config, num_envs=1)
        self.diffusion = DiffusionHandle(self.mdp)  # the public interface for policies (see DiffusionHandle)
        self.observation_space = self.mdp.single_observation_space()
        self.action_space = self.mdp.single_action_space()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
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

"""Episodes through the env: a policy drives ``env.reset``/``env.step`` and the batch is recorded as
:class:`~agents.algorithms.buffers.Trajectories`.

The env may be wrapped: the rollout calls the ``reset``/``step`` of the env it is given (so wrappers see every
step) and reads only the schedule from ``env.unwrapped.diffusion``. Observations may be torch tensors or numpy
arrays: they are converted with ``torch.as_tensor(..., device=diffusion.device)`` for the policy, and actions go
back in the type the env returned (numpy in, numpy out). Rewards, ``terminated`` and the terminal ``info`` are
read the same way, so the recorded batch is the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from agents.algorithms.buffers import Trajectories
from diffusion_gym.sampling import PolicyStep


class SamplingPolicy(Protocol):
    """What a rollout needs of a policy: an action for a (torch) observation (:meth:`DiffusionPolicy.sample`)."""

    def sample(self, observation: dict[str, torch.Tensor], generator: torch.Generator) -> PolicyStep: ...


def observation_to_torch(observation: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """An env observation with every entry as a torch tensor on ``device`` (a tensor already there is not copied)."""
    return {key: torch.as_tensor(value, device=device) for key, value in observation.items()}


def action_like(action: torch.Tensor, observation: dict[str, Any]) -> torch.Tensor | np.ndarray:
    """``action`` ``(B, C, H, W)`` in the type of the env's observation: a numpy array if the env returned numpy."""
    if isinstance(observation["latent"], np.ndarray):
        return action.detach().cpu().numpy()
    return action


@dataclass
class Rollout:
    """One batch of episodes being collected: :meth:`start` runs it through the env, :meth:`finish` records it.

    Two phases so that the terminal reward can be scored while the caller does something else: with
    ``asynchronous=True`` the last step is ``env.step_async`` (the env scores the reward on its worker thread) and
    :meth:`finish` waits for it (``env.step_wait``); otherwise it is ``env.step`` and :meth:`finish` only records.
    Either way the env's observations, rewards and the ``generator``'s draws are the same.
    """

    env: Any  # the vector env (possibly wrapped; asynchronous: a DiffusionT2IVectorEnv, see Agent.collect)
    prompts: list[str]  # B goal prompts
    asynchronous: bool
    prompt_embeddings: torch.Tensor  # (B, S, D)
    desired_goals: torch.Tensor  # (B, G)
    latents: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x (B, C, H, W): x_t
    next_latents: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x (B, C, H, W): the actions
    log_probs: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x (B,)
    timesteps: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x 0-d int64
    stochastic: list[bool] = dataclasses.field(default_factory=list)  # T
    last_step: tuple | None = None  # the terminal step's (obs, reward, terminated, truncated, info), synchronous

    @classmethod
    def start(
        cls,
        env,
        policy: SamplingPolicy,
        prompts: list[str],
        seed: int | list[int],
        generator: torch.Generator,
        asynchronous: bool = False,
    ) -> Rollout:
        """Reset ``env`` and take the ``T`` steps of the schedule with actions from ``policy``.

        ``reset(seed=seed)`` draws the initial noise (sub-env ``i`` from ``seed + i``, or from ``seed[i]`` for a
        list); ``generator`` draws the policy's action noise. ``policy`` is anything with
        :meth:`DiffusionPolicy.sample`. With ``asynchronous``, the last step is left pending on ``env``
        (``step_async``): ``env`` must not be reset before :meth:`finish`.
        """
        diffusion = env.unwrapped.diffusion
        raw, _ = env.reset(seed=seed, options={"prompts": list(prompts)})
        observation = observation_to_torch(raw, diffusion.device)
        rollout = cls(
            env,
            list(prompts),
            asynchronous,
            prompt_embeddings=observation["prompt_embedding"].clone(),  # (B, S, D)
            desired_goals=observation["desired_goal"].clone(),  # (B, G)
        )
        num_steps = diffusion.num_inference_steps
        for index in range(num_steps):
            step: PolicyStep = policy.sample(observation, generator)
            rollout.latents.append(observation["latent"].clone())  # (B, C, H, W)
            rollout.timesteps.append(observation["timestep"][0, 0].clone())  # all envs share the schedule
            rollout.next_latents.append(step.action)  # (B, C, H, W)
            rollout.log_probs.append(step.log_prob)  # (B,)
            rollout.stochastic.append(bool(step.stochastic[0]))
            action = action_like(step.action, raw)
            if index < num_steps - 1:
                raw, *_ = env.step(action)
                observation = observation_to_torch(raw, diffusion.device)
            elif asynchronous:
                env.step_async(action)  # the reward is scored on the env's worker thread
            else:
                rollout.last_step = env.step(action)
        return rollout

    def discard(self) -> None:
        """Give the batch up; a pending terminal step is waited for (its errors ignored), so the env can be reset."""
        if self.asynchronous:
            with contextlib.suppress(Exception):
                self.env.step_wait()

    def finish(self) -> Trajectories:
        """The recorded :class:`Trajectories` (asynchronous: after waiting for the terminal reward)."""
        last_step = self.env.step_wait() if self.asynchronous else self.last_step
        raw, reward, terminated, _, info = last_step
        if not bool(torch.as_tensor(terminated).all()):
            raise RuntimeError("the episodes did not terminate at the end of the schedule")
        achieved_goals = torch.as_tensor(raw["achieved_goal"], device=self.prompt_embeddings.device)
        return Trajectories(
            latents=torch.stack(self.latents, dim=1),  # T x (B, C, H, W) -> (B, T, C, H, W)
            next_latents=torch.stack(self.next_latents, dim=1),  # (B, T, C, H, W)
            timesteps=torch.stack(self.timesteps).cpu(),  # (T,)
            log_probs=torch.stack(self.log_probs, dim=1),  # T x (B,) -> (B, T)
            stochastic=torch.tensor(self.stochastic),  # (T,)
            prompt_embeddings=self.prompt_embeddings,
            prompts=self.prompts,
            rewards=_cpu(reward),  # (B,)
            achieved_goals=achieved_goals.clone(),  # (B, G)
            desired_goals=self.desired_goals,
            gold_scores=_cpu(info.get("gold_score")),
            proxy_scores=_cpu(info.get("proxy_score")),
            final_images=torch.as_tensor(info["final_images"]),  # (B, 3, H, W)
        )


def collect_trajectories(
    env, policy: SamplingPolicy, prompts: list[str], seed: int | list[int], generator: torch.Generator
) -> Trajectories:
    """Run one batch of episodes through ``env`` (the vector env, possibly wrapped) with actions from ``policy``.

    ``reset(seed=seed)`` draws the initial noise (sub-env ``i`` from ``seed + i``, or ``seed[i]`` for a list);
    ``generator`` draws the policy's action noise. Returns the recorded :class:`Trajectories` (:class:`Rollout` in
    one go).
    """
    return Rollout.start(env, policy, prompts, seed, generator).finish()


def _cpu(value) -> torch.Tensor | None:
    return None if value is None else torch.as_tensor(value).float().cpu()


__all__ = ["Rollout", "SamplingPolicy", "action_like", "collect_trajectories", "observation_to_torch"]

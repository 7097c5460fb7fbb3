r"""DPOK: policy gradient with a KL penalty to the pretrained model and a learned value baseline (Fan et al.).

DPOK minimises :math:`\mathbb E[-\alpha\, r(x_0, c)] + \beta \sum_t \mathbb E[\mathrm{KL}_t]`, with
:math:`\mathrm{KL}_t = \mathrm{KL}(\pi_\theta(\cdot \mid x_t, c) \,\|\, \pi_{pre}(\cdot \mid x_t, c))`: the per-step
upper bound of :math:`\mathrm{KL}(p_\theta(x_0|c) \| p_{pre}(x_0|c))`. The gradient:

.. math::

    \mathbb E\Big[-\alpha \sum_t (\tilde r - V(x_t, c, t))\,\nabla_\theta\log\pi_\theta(x_{t-1} \mid x_t, c)
    + \beta \sum_t \nabla_\theta \mathrm{KL}_t\Big]

* :math:`\tilde r` is the normalised reward (per-prompt stat tracker or batch-wide, as DDPO);
* :math:`V(x_t, c, t)`, a small network (:class:`ValueNetwork`), is trained by regression on :math:`\tilde r`
  and used as a per-step baseline (DPOK's variance reduction);
* :math:`\mathrm{KL}_t = \lVert\mu_\theta - \mu_{pre}\rVert^2 / 2\sigma_t^2` in closed form
  (:func:`agents.algorithms.math.gaussian_step_kl`; :math:`\pi_{pre}` is the UNet with the LoRA adapter disabled);
* the policy term is taken through PPO's clipped ratio, as DPOK's own code does, so that samples of an
  earlier minibatch (or HERD's replay) stay trust-region bounded; at the first update it equals REINFORCE.

``reward_alpha`` is :math:`\alpha`, ``kl_beta`` is :math:`\beta`; ``kl_to_reference`` logs the mean per-step KL.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from agents.algorithms.base import Agent, StepLoss
from agents.algorithms.buffers import StepBatch
from agents.algorithms.math import clip_advantages, gaussian_step_kl, ppo_clipped_loss
from agents.checkpoint import clone_state
from diffusion_gym.sampling import PolicyStep


class ValueNetwork(nn.Module):
    """:math:`V(x_t, c, t)`: an MLP on the pooled latent, the token-mean prompt embedding and a sinusoidal ``t``."""

    def __init__(self, latent_channels: int, embedding_dim: int, hidden: int = 128, pooled: int = 4, t_dim: int = 32):
        super().__init__()
        self.pooled, self.t_dim = pooled, t_dim
        self.net = nn.Sequential(
            nn.Linear(latent_channels * pooled * pooled + embedding_dim + t_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def timestep_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding ``(B, t_dim)`` of integer timesteps ``(B,)``."""
        half = self.t_dim // 2
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=timesteps.device) / half)  # (half,)
        angles = timesteps.float()[:, None] * frequencies[None]  # (B, half)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, t_dim)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(latents, self.pooled).flatten(1)  # (B, C * p * p)
        prompt = prompt_embeddings.mean(dim=1)  # (B, S, D) -> (B, D)
        features = torch.cat([pooled, prompt, self.timestep_embedding(timesteps)], dim=1)
        return self.net(features).squeeze(1)  # (B,)


class DPOKAgent(Agent):
    """KL-regularised policy gradient with a value baseline."""

    name = "dpok"

    def setup(self) -> None:
        """The value network V and its optimiser (initialised from ``seed + 1``, the same on every process)."""
        config = self.config
        with torch.random.fork_rng():
            torch.manual_seed(config.seed + 1)
            self.value = ValueNetwork(self.diffusion.latent_shape[0], self.diffusion.embedding_dim)
        self.value.to(self.diffusion.device)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value_learning_rate)

    # advantages: Agent.advantages -- the normalised reward r~, clipped (V is subtracted per step below)

    def step_loss(self, batch: StepBatch, step: PolicyStep) -> StepLoss:
        config = self.config
        states = (batch.latents, batch.timesteps, batch.prompt_embeddings)
        value = self.value(*states)  # (M,): V(x_t, c, t)
        value_loss = nn.functional.mse_loss(value, batch.advantages)  # regress V on r~
        # alpha * (r~ - V(x_t, c, t)): the per-step advantage
        advantages = clip_advantages(config.reward_alpha * (batch.advantages - value.detach()), config.adv_clip_max)
        policy_loss, _, _ = ppo_clipped_loss(
            step.log_prob, batch.old_log_probs, advantages, config.clip_range, config.dual_clip
        )
        reference = self.policy.reference(*states, batch.next_latents)  # pi_pre, no grad
        kl = gaussian_step_kl(step.mean, reference.mean, step.std_dev_t)  # (M,)
        loss = policy_loss + config.kl_beta * kl.mean() + value_loss
        return StepLoss(
            loss, {"policy_loss": policy_loss.detach(), "kl_to_reference": kl.detach().mean(), "value_loss": value_loss}
        )

    def optimizer_step(self) -> None:
        """Average, unscale (float16) and clip the gradients of the policy and of V (each to ``max_grad_norm``, on
        its own), then step both, or, when the float16 loss scaler finds an overflowed gradient in either (both
        come from the one scaled loss), neither: the scaler skips the step and lowers its scale."""
        value_parameters = list(self.value.parameters())
        self.distributed.sync_gradients(self.parameters)  # mean over the processes (no-op for one)
        self.distributed.sync_gradients(value_parameters)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            self.scaler.unscale_(self.value_optimizer)
        policy_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        value_norm = torch.nn.utils.clip_grad_norm_(value_parameters, self.config.max_grad_norm)
        # a total norm is inf/NaN exactly when one of its gradients is: what the scaler's own check finds
        overflowed = self.scaler.is_enabled() and not bool(torch.isfinite(policy_norm) & torch.isfinite(value_norm))
        if not overflowed:
            self.scaler.step(self.optimizer)  # optimizer.step() (the scaler found no overflow either)
            self.scaler.step(self.value_optimizer)
        self.scaler.update()  # lowers the scale after an overflow (no-op without float16)
        self.optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["value"] = clone_state(self.value.state_dict())
        state["value_optimizer"] = clone_state(self.value_optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.value.load_state_dict(state["value"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])

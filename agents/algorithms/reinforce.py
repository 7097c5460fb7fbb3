r"""REINFORCE for diffusion models: DDPO-SF, the score-function policy gradient (Black et al., DDPO).

.. math::

    \nabla_\theta J = \mathbb E\Big[\sum_t A\,\nabla_\theta \log\pi_\theta(x_{t-1} \mid x_t, c)\Big],
    \qquad A = \frac{r(x_0, c) - b(c)}{\sigma(c)}

with the baseline :math:`b(c)` the per-prompt (stat tracker) or batch mean reward (``reinforce_baseline=False``
drops it: :math:`A = r / \sigma`). One optimiser step per sampling batch (``inner_epochs`` and
``train_batch_size`` are ignored).

A batch trained after the first update of the epoch is slightly off-policy, and HERD's relabeled trajectories
are off-policy, so each term carries the importance weight :math:`w = \pi_\theta / \pi_{old}`, detached and
truncated at ``1 + clip_range``. On the first update it is exactly 1: plain REINFORCE.
"""

from __future__ import annotations

import dataclasses

import torch

from agents.algorithms.base import Agent, StepLoss
from agents.algorithms.buffers import StepBatch, Trajectories
from agents.algorithms.math import MAX_LOG_RATIO, clip_advantages
from agents.config import AgentConfig
from diffusion_gym.sampling import PolicyStep


class ReinforceAgent(Agent):
    """DDPO-SF: one score-function update per sampling batch."""

    name = "reinforce"

    @classmethod
    def configure(cls, config: AgentConfig) -> AgentConfig:
        # REINFORCE is one on-policy pass: one update per sampling batch.
        return dataclasses.replace(config, inner_epochs=1, train_batch_size=None)

    def advantages(self, samples: Trajectories) -> torch.Tensor:
        if self.config.reinforce_baseline:
            return super().advantages(samples)  # (r - mean) / std, per prompt or batch-wide, clipped
        scale = samples.rewards.std(unbiased=False) + 1e-6
        return clip_advantages(samples.rewards / scale, self.config.adv_clip_max)  # (N,): r / std

    def step_loss(self, batch: StepBatch, step: PolicyStep) -> StepLoss:
        # w = min(pi_theta / pi_old, 1 + eps), a constant: 1 on-policy
        log_ratio = (step.log_prob - batch.old_log_probs).detach().clamp(max=MAX_LOG_RATIO)  # (M,)
        weight = log_ratio.exp().clamp(max=1.0 + self.config.clip_range)
        # L = -E[w A log pi_theta(x_{t-1} | x_t, c)]
        loss = -(weight * batch.advantages * step.log_prob).mean()
        return StepLoss(loss, {})


__all__ = ["ReinforceAgent"]

r"""LOOP: leave-one-out PPO (Gupta et al.).

Each sampling batch holds ``batch_size / K`` prompts, each sampled ``K = loop_k`` times. The baseline of
trajectory :math:`i` is the mean reward of the other :math:`K-1` trajectories of its prompt,

.. math:: A_i = r_i - \frac{1}{K-1}\sum_{j \ne i} r_j ,

scaled by the batch's reward std (a positive constant per batch, so that one learning rate fits every reward
scale) and clipped; then the PPO clipped surrogate of :mod:`agents.algorithms.ddpo`. Trajectories are grouped by prompt
string: HERD's relabeled trajectories form their own groups (a group of one falls back to the batch mean). A
prompt drawn twice in a batch makes one group of 2K, so on a one-prompt task (the default, ``shapes-long``) the
group is the whole batch whatever K is; there :math:`A_i` is DDPO's per-prompt advantage times
:math:`N / (N - 1)`, and Adam takes the same step for both (docs/experiments/2026-12-05-default-run.md).
"""

from __future__ import annotations

import torch

from agents.algorithms.base import Agent, StepLoss
from agents.algorithms.buffers import StepBatch, Trajectories
from agents.algorithms.math import clip_advantages, leave_one_out_baseline, ppo_clipped_loss
from agents.config import AgentConfig
from diffusion_gym.sampling import PolicyStep


class LOOPAgent(Agent):
    """K trajectories per prompt, leave-one-out baseline, PPO clipping and importance sampling."""

    name = "loop"

    @classmethod
    def configure(cls, config: AgentConfig) -> AgentConfig:
        if config.batch_size % config.loop_k != 0:
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of loop_k={config.loop_k}")
        return config

    def sample_prompts(self) -> list[str]:
        """``batch_size / K`` prompts, each repeated ``K`` times (consecutively)."""
        return self.sample_prompt_groups(self.config.loop_k)

    def advantages(self, samples: Trajectories) -> torch.Tensor:
        baseline = leave_one_out_baseline(samples.rewards, samples.prompts)  # (N,)
        scale = samples.rewards.std(unbiased=False) + 1e-6
        return clip_advantages((samples.rewards - baseline) / scale, self.config.adv_clip_max)  # (N,)

    def step_loss(self, batch: StepBatch, step: PolicyStep) -> StepLoss:
        loss, _, _ = ppo_clipped_loss(
            step.log_prob, batch.old_log_probs, batch.advantages, self.config.clip_range, self.config.dual_clip
        )
        return StepLoss(loss, {})

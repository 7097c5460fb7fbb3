r"""DDPO-IS: PPO on the denoising MDP (Black et al., DDPO; TRL's ``DDPOTrainer``).

Per step :math:`t` of a trajectory with advantage :math:`A` (per-prompt normalised reward, clipped to
``[-adv_clip_max, adv_clip_max]``):

.. math::

    \rho_t = \frac{\pi_\theta(x_{t-1} \mid x_t, c)}{\pi_{old}(x_{t-1} \mid x_t, c)}, \qquad
    L = -\mathbb E\big[\min(\rho_t A,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)A)\big]

``inner_epochs`` passes over the epoch's samples, minibatches of ``train_batch_size`` trajectories, a random
``train_timestep_fraction`` of the steps of each. :math:`\log\pi` is summed over latent dims (the env's
convention), so :math:`\rho_t` is far sharper than DDPO's per-dim-mean ratio: ``clip_range`` defaults to 0.2
in these units (DDPO's 1e-4 per-dim clip would be ~0.03 here for a 4x8x8 latent, and freezes learning).
"""

from __future__ import annotations

from agents.algorithms.base import Agent, StepLoss
from agents.algorithms.buffers import StepBatch
from agents.algorithms.math import ppo_clipped_loss
from diffusion_gym.sampling import PolicyStep


class DDPOAgent(Agent):
    """DDPO with importance sampling and clipping (PPO), per-prompt stats, inner epochs."""

    name = "ddpo"

    # advantages: Agent.advantages -- per-prompt stat tracker (or batch-wide), clipped

    def step_loss(self, batch: StepBatch, step: PolicyStep) -> StepLoss:
        loss, _, _ = ppo_clipped_loss(
            step.log_prob, batch.old_log_probs, batch.advantages, self.config.clip_range, self.config.dual_clip
        )
        return StepLoss(loss, {})

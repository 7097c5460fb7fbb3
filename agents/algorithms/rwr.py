r"""RWR: reward-weighted regression on the model's own samples (the baseline of DDPO's and TRL's blog posts).

Each epoch samples trajectories through the env like every agent, then keeps only their outcome
:math:`x_0` (the last action): it fine-tunes the model with its own diffusion training loss on those samples,
each weighted by its reward,

.. math::

    L = \mathbb E_{i,\ t \sim U[t_{min}, T_{train}),\ \epsilon \sim \mathcal N(0, I)}
        \big[\, w_i \, \lVert f_\theta(x_t^{(i)}, t, c_i) - y_t^{(i)} \rVert^2 \big], \qquad
    x_t^{(i)} = \sqrt{\bar\alpha_t}\, x_0^{(i)} + \sqrt{1 - \bar\alpha_t}\, \epsilon ,

with :math:`f_\theta` the UNet's conditional output (LoRA or full; :meth:`DiffusionPolicy.predict
<agents.algorithms.policy.DiffusionPolicy.predict>`, no guidance: pretraining's loss), :math:`y_t` its target under
the scheduler's ``prediction_type`` (:math:`\epsilon`, or
:math:`v = \sqrt{\bar\alpha_t}\epsilon - \sqrt{1-\bar\alpha_t}x_0`), the squared error **averaged** over
latent dims (the usual diffusion loss, unlike the summed log-probs of the policy-gradient agents), and
:math:`w_i = \exp(A_i/\tau) / \overline{\exp(A/\tau)}` (:func:`agents.algorithms.math.reward_weights`) from
the per-prompt normalised, clipped reward :math:`A_i`.

``rwr_baseline`` uses :math:`w_i - 1` instead: signed weights with mean 0, so that samples of equal reward train
nothing. Without it, every sample is also plain self-training data: the policy samples with classifier-free
guidance, and fitting the conditional branch to guided samples sharpens it epoch after epoch (the guidance is
applied again on top). On the Shapes world that drift alone moved the images (README).

Why it is here: the policy-gradient agents' per-step score :math:`\nabla\log\pi` is dominated by each step's own
sampling noise, which says nothing of the reward (``benchmarks/probes/gradient_noise.py`` measures it). RWR regresses on
the outcome only: no importance ratio, no per-step log-prob, at the price of DDPO's "multiple levels of
approximation" (the diffusion loss stands in for :math:`-\log p_\theta(x_0 \mid c)`).

**Learning rate.** RWR's default is 1e-4 (``agents.config.AGENT_LEARNING_RATES``), not the policy-gradient
agents' 1e-3: on the Shapes world RWR diverged at 1e-3 (training gold 0.88 -> 0.45 in 17 epochs).

Compute: per trajectory and inner epoch, ``ceil(train_timestep_fraction x S)`` loss terms (``S`` stochastic
sampling steps) at uniform random training timesteps in ``[train_timestep_min, T_train)``, each one
conditional UNet pass: about half the training compute of one of DDPO's guided steps. With HERD, a relabeled
trajectory is a regression target for its new sentence, weighted by its recomputed reward: RWR reads no behaviour
log-probs, so ``herd_off_policy_correction`` changes nothing for it.
"""

from __future__ import annotations

import math

import torch

from agents.algorithms.base import Agent
from agents.algorithms.buffers import Trajectories
from agents.algorithms.math import clip_advantages, reward_weights


def diffusion_target(scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses at ``x_t = add_noise(clean, noise, t)``, by the scheduler's ``prediction_type``."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)  # sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
    if prediction_type == "sample":
        return clean
    raise ValueError(f"RWR cannot train a UNet with prediction_type {prediction_type!r}")


class RWRAgent(Agent):
    """Reward-weighted regression: the diffusion loss on the agent's own samples, weighted by exp(A / tau)."""

    name = "rwr"

    def advantages(self, samples: Trajectories) -> torch.Tensor:
        """RWR's per-trajectory scalar is its regression weight ``(N,)``: mean 1, or mean 0 with ``rwr_baseline``."""
        normalised = clip_advantages(self.normalized_rewards(samples), self.config.adv_clip_max)  # (N,)
        weights = reward_weights(normalised, self.config.rwr_temperature)  # (N,), mean 1
        return weights - 1.0 if self.config.rwr_baseline else weights

    def diffusion_loss(
        self, clean: torch.Tensor, prompt_embeddings: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """One draw of the weighted loss: ``mean_i w_i |f_theta(x_t, t, c_i) - y_t|^2`` at random ``t`` and noise.

        ``clean`` ``(M, C, H, W)`` final latents, ``prompt_embeddings`` ``(M, S, D)``, ``weights`` ``(M,)``.
        """
        scheduler = self.policy.scheduler
        device = clean.device
        low, high = self.config.train_timestep_min, scheduler.config.num_train_timesteps
        timesteps = torch.randint(low, high, (len(clean),), generator=self.generator).to(device)  # (M,)
        noise = torch.randn(clean.shape, generator=self.generator).to(device, clean.dtype)  # (M, C, H, W)
        noisy = scheduler.add_noise(clean, noise, timesteps)  # x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
        target = diffusion_target(scheduler, clean, noise, timesteps)  # (M, C, H, W)
        prediction = self.policy.predict(noisy, timesteps, prompt_embeddings)  # (M, C, H, W): conditional
        squared_error = (prediction - target.float()).pow(2).mean(dim=(1, 2, 3))  # (M,): mean over latent dims
        return (weights * squared_error).mean()

    def draws_per_trajectory(self, samples: Trajectories) -> int:
        """Loss terms per trajectory and inner epoch: ``ceil(train_timestep_fraction x S)``."""
        return max(1, math.ceil(self.config.train_timestep_fraction * int(samples.stochastic.sum())))

    def update(self, samples: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        """``inner_epochs`` passes of weighted diffusion-loss minibatches over the samples' final latents."""
        config = self.config
        device = samples.latents.device
        weights = advantages.to(device)  # (N,)
        clean = samples.next_latents[:, -1]  # (N, C, H, W): x_0, the last action of each trajectory
        draws = self.draws_per_trajectory(samples)
        minibatch = config.train_batch_size or config.batch_size
        losses: list[torch.Tensor] = []
        for _ in range(config.inner_epochs):
            order = torch.randperm(len(samples), generator=self.generator).to(device)  # (N,)
            for start in range(0, len(samples), minibatch):
                rows = order[start : start + minibatch]  # (M,)
                for _ in range(draws):
                    loss = self.diffusion_loss(clean[rows], samples.prompt_embeddings[rows], weights[rows])
                    self.distributed.backward(self.scaler.scale(loss / draws))  # average the gradient over the draws
                    losses.append(loss.detach())
                self.optimizer_step()
        return {"loss": float(torch.stack(losses).mean())}


__all__ = ["RWRAgent", "diffusion_target"]

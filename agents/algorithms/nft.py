r"""NFT: forward-process RL, DiffusionNFT's negative-aware fine-tuning (Zheng et al., ICLR 2026, arXiv 2509.16117).

Each epoch samples clean latents :math:`x_0` with the old (sampling) policy, scores them, maps the rewards to
optimality probabilities :math:`r_i \in [0, 1]` (:func:`agents.algorithms.math.optimality_probabilities`: the deviation
from the batch (or prompt) mean over the largest absolute deviation), and trains on the **forward** process only: each
:math:`x_0` is noised to :math:`x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon` at
``nft_timesteps`` stratified timesteps, and the UNet's conditional output :math:`f_\theta` (no guidance) is trained
on

.. math::

    f^+ = (1 - \beta) f_{old} + \beta f_\theta, \qquad f^- = (1 + \beta) f_{old} - \beta f_\theta, \qquad
    L = \mathbb E\big[ r \lVert f^+ - y \rVert^2 + (1 - r) \lVert f^- - y \rVert^2 \big]

(:func:`agents.algorithms.math.nft_loss`), with :math:`y` the diffusion target under the scheduler's prediction type
(:math:`\epsilon` or :math:`v`) and :math:`f_{old}` the old policy's output at the same :math:`(x_t, t)`. The
paper writes it for the flow-matching velocity; ``docs/agents.md`` shows that it carries over unchanged to
:math:`\epsilon`- and :math:`v`-prediction, up to a per-timestep weight.

What it frees: no per-step log-probability, no stored trajectory (only :math:`x_0`), any sampler.
``nft_sampling_steps`` ``None`` samples through the env like every agent (its DDIM, eta, number of steps);
``k`` samples the training images with a private deterministic DDIM (eta 0) of ``k`` steps, guided at the policy's
guidance scale, decoded and scored through ``env.unwrapped.diffusion`` (``decode_latents``, ``score_images``). The
held-out evaluation (:meth:`Agent.generate`) always goes through the env, the same sampler for every agent.

Groups: with ``nft_group_size`` K each batch holds ``batch_size / K`` prompts sampled K times each, and (with
``per_prompt_stats``) every sample's :math:`r` is normalised within its prompt's K samples, DiffusionNFT's groups;
without it prompts are drawn uniformly and a prompt's group is whatever the batch holds of it (on a one-prompt task,
the whole batch either way).

Per-sentence rewards: ``make_agent("herd", env, config)`` with ``herd_base="nft"`` (the ``herd-nft`` variant)
adds HERD's replay to each epoch's samples: last epoch's clean images, each under one random sentence of its prompt
with its reward recomputed for that sentence. NFT needs only :math:`x_0`, its prompt and its reward, so a relabeled
image is a training sample like any other (no importance weight: the loss has no behaviour density), and with
``per_prompt_stats`` each sentence's images are normalised among themselves.

The old policy: ``nft_old_ema`` 0 (default) makes it the current policy at the start of each epoch (the samples
are on-policy). ``nft_old_ema`` :math:`\lambda > 0` keeps a separate copy of the trainable weights, softly updated
after each epoch, :math:`\theta_{old} \leftarrow \lambda\theta_{old} + (1 - \lambda)\theta` (the paper's soft
update, here with a constant :math:`\lambda`), which samples the training images and gives :math:`f_{old}`; the
evaluation uses :math:`\theta`. :math:`f_{old}` is computed once per epoch, before the first optimiser step, for every
training point (one forward pass without gradients), and reused by the ``inner_epochs`` passes.

Compute per epoch: sampling (``k`` or the env's steps, two UNet passes each with guidance), then for
``N x nft_timesteps`` training points one forward pass for :math:`f_{old}` and ``inner_epochs`` forward/backward
passes, in minibatches of ``train_batch_size`` samples (each with its ``nft_timesteps`` points in one UNet call).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from agents.algorithms.base import Agent
from agents.algorithms.buffers import Trajectories
from agents.algorithms.math import nft_loss, optimality_probabilities, stratified_timesteps
from agents.algorithms.rwr import diffusion_target
from agents.checkpoint import clone_state
from agents.config import AgentConfig
from diffusion_gym.ddim import ddim_step_coefficients, ddim_step_mean


class NFTAgent(Agent):
    """Forward-process RL: DiffusionNFT's positive/negative implicit-policy loss on the policy's own clean samples."""

    name = "nft"

    def __init__(self, env, config: AgentConfig, *, relabeler=None, distributed=None):
        if relabeler is not None and not config.herd_off_policy_correction:  # before any state changes
            raise ValueError(
                "herd over nft needs herd_off_policy_correction (the default): without it HERD rescores the "
                "replay's behaviour log-probs, which nft's loss never reads"
            )
        super().__init__(env, config, relabeler=relabeler, distributed=distributed)

    @classmethod
    def configure(cls, config: AgentConfig) -> AgentConfig:
        group = config.nft_group_size
        if group is not None and config.batch_size % group != 0:
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of nft_group_size={group}")
        return config

    def setup(self) -> None:
        """The old policy's weights (``nft_old_ema > 0``) and the private few-step scheduler
        (``nft_sampling_steps``)."""
        self.old_parameters: dict[str, torch.Tensor] | None = None
        if self.config.nft_old_ema > 0:
            self.old_parameters = {k: v.detach().clone() for k, v in self.policy.named_trainable_parameters().items()}
        self.sampling_scheduler = None
        if self.config.nft_sampling_steps is not None:
            scheduler = copy.deepcopy(self.diffusion.scheduler)  # never set_timesteps on the env's own
            scheduler.set_timesteps(self.config.nft_sampling_steps)
            self.sampling_scheduler = scheduler

    # ------------------------------------------------------------------------------ the old policy
    @contextmanager
    def old_policy(self) -> Iterator[None]:
        """The policy's trainable weights are the old policy's inside the block (a no-op when the old policy is the
        current one, ``nft_old_ema == 0``); the current weights are restored on exit."""
        if self.old_parameters is None:
            yield
            return
        parameters = self.policy.named_trainable_parameters()
        current = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(self.old_parameters[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in parameters.items():
                    parameter.copy_(current[name])

    def soft_update_old_policy(self) -> None:
        r"""The soft update :math:`\theta_{old} \leftarrow \lambda\theta_{old} + (1 - \lambda)\theta`, with
        :math:`\lambda` = ``nft_old_ema``."""
        if self.old_parameters is None:
            return
        ema = self.config.nft_old_ema
        with torch.no_grad():
            for name, parameter in self.policy.named_trainable_parameters().items():
                self.old_parameters[name].mul_(ema).add_(parameter.detach(), alpha=1.0 - ema)

    # ------------------------------------------------------------------------------ sampling
    def sample_prompts(self) -> list[str]:
        """Uniform prompts, or ``batch_size / K`` prompts sampled ``K = nft_group_size`` times each."""
        if self.config.nft_group_size is None:
            return super().sample_prompts()
        return self.sample_prompt_groups(self.config.nft_group_size)

    def collect(self) -> list[Trajectories]:
        """The epoch's batches from the old policy: through the env, or with the private few-step sampler."""
        with self.old_policy():
            if self.sampling_scheduler is None:
                return super().collect()
            return [self.sample_few_steps() for _ in range(self.config.batches_per_epoch)]

    @torch.no_grad()
    def sample_few_steps(self) -> Trajectories:
        """One batch of ``batch_size`` clean samples with the deterministic ``nft_sampling_steps``-step DDIM, guided,
        as :class:`Trajectories` of one deterministic step ``x_T -> x_0`` (what :meth:`update` reads: the prompts,
        their embeddings, the final latents, the rewards and scores)."""
        diffusion, scheduler, policy = self.diffusion, self.sampling_scheduler, self.policy
        prompts = self.sample_prompts()
        embeddings = diffusion.encode_prompts(prompts)  # (B, S, D)
        negative = policy.negative_embeddings.expand(len(prompts), -1, -1)  # (B, S, D)
        prediction_type = scheduler.config.get("prediction_type", "epsilon")
        shape = (len(prompts), *diffusion.latent_shape)
        noise = torch.randn(shape, generator=self.generator)  # (B, C, H, W)
        start = (noise * float(scheduler.init_noise_sigma)).to(diffusion.device)
        latents = start
        for timestep in scheduler.timesteps:
            timesteps = torch.full((len(prompts),), int(timestep), dtype=torch.long, device=latents.device)  # (B,)
            conditional = policy.predict(latents, timesteps, embeddings)  # (B, C, H, W)
            unconditional = policy.predict(latents, timesteps, negative)
            guided = unconditional + policy.guidance_scale * (conditional - unconditional)
            coefficients = ddim_step_coefficients(scheduler, timesteps.cpu(), 0.0, device=latents.device)
            latents, _ = ddim_step_mean(latents, guided, coefficients, prediction_type)  # eta 0: deterministic
        images = diffusion.decode_latents(latents)  # (B, 3, H, W) in [0, 1]
        scores = diffusion.score_images(images, prompts)
        codec = diffusion.codec  # the goals as the env records them: [prompt | 1 | x_0]
        return Trajectories(
            latents=start[:, None],  # (B, 1, C, H, W): x_T
            next_latents=latents[:, None],  # (B, 1, C, H, W): x_0
            timesteps=scheduler.timesteps[:1].long().cpu(),  # (1,)
            log_probs=torch.zeros(len(prompts), 1, device=latents.device),  # deterministic: no density
            stochastic=torch.zeros(1, dtype=torch.bool),
            prompt_embeddings=embeddings,
            prompts=list(prompts),
            rewards=scores["reward"],
            achieved_goals=codec.encode(prompts, latents),
            desired_goals=codec.encode(prompts).to(latents.device),
            gold_scores=scores.get("gold_score"),
            proxy_scores=scores.get("proxy_score"),
            final_images=images.cpu(),
        )

    # ------------------------------------------------------------------------------ the update
    def advantages(self, samples: Trajectories) -> torch.Tensor:
        """The optimality probabilities ``(N,)`` in [0, 1]: per prompt with ``per_prompt_stats``, else batch-wide."""
        groups = list(samples.prompts) if self.config.per_prompt_stats else None
        return optimality_probabilities(samples.rewards, groups, scale=self.config.nft_optimality)

    def training_points(self, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clean latent's ``nft_timesteps`` training timesteps ``(N, k)`` (stratified) and noises
        ``(N, k, C, H, W)``, drawn from the agent's generator."""
        low, high = self.config.train_timestep_min, self.policy.scheduler.config.num_train_timesteps
        timesteps = stratified_timesteps(len(clean), self.config.nft_timesteps, low, high, self.generator)  # (N, k)
        noise = torch.randn((*timesteps.shape, *clean.shape[1:]), generator=self.generator)  # (N, k, C, H, W)
        return timesteps.to(clean.device), noise.to(clean.device, clean.dtype)

    def noised(self, clean: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor):
        """Flatten ``(M, k)`` points: ``x_t``, ``t``, target, each ``(M*k, ...)``; ``clean`` ``(M, C, H, W)``."""
        scheduler = self.policy.scheduler
        count = timesteps.shape[1]
        clean = clean.repeat_interleave(count, dim=0)  # (M*k, C, H, W): row i*k + j is sample i at its j-th t
        timesteps = timesteps.reshape(-1)  # (M*k,)
        noise = noise.reshape(-1, *noise.shape[2:])  # (M*k, C, H, W)
        noisy = scheduler.add_noise(clean, noise, timesteps)  # x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
        return noisy, timesteps, diffusion_target(scheduler, clean, noise, timesteps).float()

    def update(self, samples: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        """``inner_epochs`` passes of NFT minibatches over the samples' clean latents (one set of training points per
        epoch, the old policy's predictions computed at them first)."""
        config = self.config
        device = samples.latents.device
        optimality = advantages.to(device)  # (N,)
        clean = samples.next_latents[:, -1]  # (N, C, H, W): x_0, the last action of each trajectory
        embeddings = samples.prompt_embeddings  # (N, S, D)
        timesteps, noise = self.training_points(clean)  # (N, k), (N, k, C, H, W)
        count = timesteps.shape[1]
        minibatch = config.train_batch_size or config.batch_size
        old_predictions = torch.empty(len(samples), count, *clean.shape[1:], device=device)  # (N, k, C, H, W)
        with torch.no_grad(), self.old_policy():
            for start in range(0, len(samples), minibatch):
                rows = torch.arange(start, min(start + minibatch, len(samples)), device=device)  # (M,)
                noisy, flat_t, _ = self.noised(clean[rows], timesteps[rows], noise[rows])
                prediction = self.policy.predict(noisy, flat_t, embeddings[rows].repeat_interleave(count, dim=0))
                old_predictions[rows] = prediction.reshape(len(rows), count, *clean.shape[1:])
        totals: dict[str, list[torch.Tensor]] = {}
        for _ in range(config.inner_epochs):
            order = torch.randperm(len(samples), generator=self.generator).to(device)  # (N,)
            for start in range(0, len(samples), minibatch):
                rows = order[start : start + minibatch]  # (M,)
                noisy, flat_t, target = self.noised(clean[rows], timesteps[rows], noise[rows])  # (M*k, ...)
                prediction = self.policy.predict(noisy, flat_t, embeddings[rows].repeat_interleave(count, dim=0))
                old = old_predictions[rows].reshape(-1, *clean.shape[1:])  # (M*k, C, H, W)
                weights = optimality[rows].repeat_interleave(count)  # (M*k,)
                loss, positive, negative = nft_loss(prediction, old, target, weights, config.nft_beta)
                self.distributed.backward(self.scaler.scale(loss))
                self.optimizer_step()
                with torch.no_grad():
                    drift = (prediction - old).pow(2).mean()  # how far theta's output moved from the old policy's
                for key, value in {
                    "loss": loss,
                    "nft_positive_error": positive.mean(),
                    "nft_negative_error": negative.mean(),
                    "nft_drift_from_old": drift,
                }.items():
                    totals.setdefault(key, []).append(value.detach().float())
        metrics = {key: float(torch.stack(values).mean()) for key, values in totals.items()}
        metrics["nft_optimality_mean"] = float(optimality.mean())
        return metrics

    def train_epoch(self):
        """:meth:`Agent.train_epoch`, then the old policy's soft update (``nft_old_ema``)."""
        result = super().train_epoch()
        self.soft_update_old_policy()
        return result

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The base agent's state and the old policy's weights (None when it is the current policy)."""
        return {**super().state_dict(), "nft_old_policy": clone_state(self.old_parameters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("nft_old_policy")
        if (saved is None) != (self.old_parameters is None):
            raise ValueError(
                f"the checkpoint's old policy ({'none' if saved is None else 'kept'}) does not match nft_old_ema="
                f"{self.config.nft_old_ema}"
            )
        if saved is not None and set(saved) != set(self.old_parameters):
            raise ValueError("the checkpoint's old-policy parameters do not match the policy's")
        super().load_state_dict({key: value for key, value in state.items() if key != "nft_old_policy"})
        if saved is not None:
            for name, value in saved.items():
                self.old_parameters[name].copy_(value)


__all__ = ["NFTAgent"]

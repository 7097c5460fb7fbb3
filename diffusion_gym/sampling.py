"""Driving the env with a diffusion model: classifier-free guidance and the DDIM step as a Gaussian policy.

These are the two pieces every policy here shares (the pretrained base policy below, and the trainable
LoRA policy of ``agents/``): :func:`guided_noise_prediction` and :func:`ddim_policy_step`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffusion_gym.ddim import check_eta, ddim_step_coefficients, ddim_step_log_prob, ddim_step_mean


def guided_noise_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeddings: torch.Tensor,
    negative_embeddings: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    r"""Classifier-free guidance: :math:`\hat\epsilon = \epsilon_\varnothing + w(\epsilon_c - \epsilon_\varnothing)`.

    ``latents`` ``(B, C, H, W)``, ``timesteps`` ``(B,)``, ``prompt_embeddings`` ``(B, S, D)``,
    ``negative_embeddings`` ``(1, S, D)`` or ``(B, S, D)``. One UNet call on the doubled batch when
    ``guidance_scale != 1``, otherwise one call on the conditional batch.
    """
    dtype = unet.dtype
    if guidance_scale == 1.0:
        return unet(latents.to(dtype), timesteps, encoder_hidden_states=prompt_embeddings.to(dtype)).sample.float()
    batch = latents.shape[0]
    negative = negative_embeddings.expand(batch, -1, -1)  # (B, S, D)
    model_input = torch.cat([latents, latents]).to(dtype)  # (2B, C, H, W)
    embeddings = torch.cat([negative, prompt_embeddings]).to(dtype)  # (2B, S, D)
    noise_uncond, noise_cond = (
        unet(model_input, torch.cat([timesteps, timesteps]), encoder_hidden_states=embeddings).sample.float().chunk(2)
    )
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


class PolicyStep(NamedTuple):
    """One DDIM step of a Gaussian diffusion policy, batched."""

    action: torch.Tensor  # (B, C, H, W): the next latent x_{t-1}
    log_prob: torch.Tensor  # (B,): log pi(action | x_t, c), summed over latent dims; 0 on deterministic steps
    mean: torch.Tensor  # (B, C, H, W): mu_theta(x_t, t, c)
    std_dev_t: torch.Tensor  # (B,): sigma_t
    stochastic: torch.Tensor  # (B,) bool: False where sigma_t < MIN_STD (the step is deterministic)


def ddim_policy_step(
    scheduler,
    noise_prediction: torch.Tensor,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float,
    generator: torch.Generator | None = None,
    action: torch.Tensor | None = None,
) -> PolicyStep:
    """Sample an action (or score a given ``action``) from the DDIM step at ``timesteps`` ``(B,)``.

    On deterministic steps (``sigma_t < MIN_STD``) the action is the mean and the log-prob is 0.
    """
    coefficients = ddim_step_coefficients(scheduler, timesteps.cpu(), eta, device=latents.device)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    mean, _ = ddim_step_mean(latents.float(), noise_prediction.float(), coefficients, prediction_type)
    std = coefficients.std_dev_t.expand(latents.shape[0])  # (B,)
    stochastic = coefficients.is_stochastic.expand(latents.shape[0])  # (B,)
    if action is None:
        noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else "cpu")
        action = mean + std.view(-1, 1, 1, 1) * noise.to(mean.device)  # (B, C, H, W)
        action = torch.where(stochastic.view(-1, 1, 1, 1), action, mean).detach()
    log_prob = torch.zeros(latents.shape[0], device=latents.device)
    if bool(stochastic.any()):
        rows = stochastic.nonzero().flatten()
        log_prob = log_prob.index_put((rows,), ddim_step_log_prob(action[rows], mean[rows], std[rows]))
    return PolicyStep(action, log_prob, mean, std, stochastic)


class PretrainedPolicy:
    """The frozen pretrained model as a policy for a ``DiffusionT2IVectorEnv``: guided DDIM with ``eta``.

    ``policy(observation) -> PolicyStep``; its ``action`` (a tensor on the env's device) is what to pass to
    ``env.step``. The observation may be the numpy or the torch backend's.
    """

    def __init__(self, vector_env, guidance_scale: float | None = None, eta: float | None = None, seed: int = 0):
        self.diffusion = vector_env.unwrapped.diffusion  # the env's public interface for policies
        world = self.diffusion.world
        self.guidance_scale = world.guidance_scale if guidance_scale is None else guidance_scale
        self.eta = check_eta(world.eta if eta is None else eta)
        self.generator = torch.Generator().manual_seed(seed)
        self.negative_embeddings = self.diffusion.unconditional_embedding  # (1, S, D)

    @torch.no_grad()
    def __call__(self, observation: dict[str, torch.Tensor | np.ndarray]) -> PolicyStep:
        observation = {key: torch.as_tensor(value, device=self.diffusion.device) for key, value in observation.items()}
        timesteps = observation["timestep"][:, 0]  # (B,)
        noise = guided_noise_prediction(
            self.diffusion.unet,
            observation["latent"],
            timesteps,
            observation["prompt_embedding"],
            self.negative_embeddings,
            self.guidance_scale,
        )
        scheduler = self.diffusion.scheduler
        return ddim_policy_step(scheduler, noise, observation["latent"], timesteps, self.eta, self.generator)

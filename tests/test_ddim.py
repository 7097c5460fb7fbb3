"""The DDIM step as a Gaussian policy: mean vs diffusers, log-prob vs torch.distributions, zero variance."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from diffusion_gym.ddim import (
    MIN_STD,
    check_scheduler_config,
    ddim_step_coefficients,
    ddim_step_kl,
    ddim_step_log_prob,
    ddim_step_mean,
)
from diffusion_gym.sampling import ddim_policy_step

SD_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
)


def sd_scheduler(steps: int = 10, **overrides) -> DDIMScheduler:
    scheduler = DDIMScheduler(**{**SD_CONFIG, "steps_offset": 1, **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_mean_matches_diffusers_step(prediction_type: str, eta: float) -> None:
    scheduler = sd_scheduler(prediction_type=prediction_type)
    torch.manual_seed(0)
    for timestep in scheduler.timesteps:
        sample, model_output = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        coefficients = ddim_step_coefficients(scheduler, timestep, eta)
        mean, _ = ddim_step_mean(sample, model_output, coefficients, prediction_type)
        # With zero variance noise, diffusers' step returns exactly the mean.
        expected = scheduler.step(model_output, timestep, sample, eta=eta, variance_noise=torch.zeros_like(sample))
        torch.testing.assert_close(mean, expected.prev_sample, rtol=1e-4, atol=1e-4)


def test_sampled_noise_matches_diffusers_std() -> None:
    scheduler = sd_scheduler()
    timestep = scheduler.timesteps[3]
    sample, model_output, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    coefficients = ddim_step_coefficients(scheduler, timestep, eta=1.0)
    mean, _ = ddim_step_mean(sample, model_output, coefficients)
    expected = scheduler.step(model_output, timestep, sample, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(mean + coefficients.std_dev_t * noise, expected, rtol=1e-5, atol=1e-5)


def test_log_prob_is_sum_of_normal_log_probs() -> None:
    mean, action = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    std = torch.tensor([0.1, 0.5, 1.0, 0.02, 0.3])
    expected = torch.distributions.Normal(mean, std.view(-1, 1, 1, 1)).log_prob(action).flatten(1).sum(1)
    torch.testing.assert_close(ddim_step_log_prob(action, mean, std), expected, rtol=1e-5, atol=1e-3)
    scalar_std = torch.tensor(0.3)
    expected_scalar = torch.distributions.Normal(mean, scalar_std).log_prob(action).flatten(1).sum(1)
    torch.testing.assert_close(ddim_step_log_prob(action, mean, scalar_std), expected_scalar, rtol=1e-5, atol=1e-3)


def test_kl_closed_form_matches_torch() -> None:
    mean_p, mean_q = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    std = torch.tensor(0.4)
    expected = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean_p, std), torch.distributions.Normal(mean_q, std)
        )
        .flatten(1)
        .sum(1)
    )
    torch.testing.assert_close(ddim_step_kl(mean_p, mean_q, std), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(ddim_step_kl(mean_p, mean_p, std) == 0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"steps_offset": 1, "set_alpha_to_one": False},  # Stable Diffusion's config
        {"steps_offset": 0, "set_alpha_to_one": False},  # last step t=0 -> alphas_cumprod[0]: zero variance
        {"steps_offset": 0, "set_alpha_to_one": True},  # last step to alpha=1: zero variance
        {"steps_offset": 1, "set_alpha_to_one": True},
    ],
)
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_no_step_yields_a_non_finite_log_prob(overrides: dict, steps: int) -> None:
    scheduler = sd_scheduler(steps, **overrides)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    for timestep in scheduler.timesteps:
        noise_prediction = torch.randn(2, 4, 8, 8)
        step = ddim_policy_step(scheduler, noise_prediction, latents, timestep.repeat(2), eta=1.0, generator=generator)
        assert torch.isfinite(step.log_prob).all()
        assert torch.isfinite(step.action).all()
        # deterministic steps take the mean and carry no log-prob
        deterministic = ~step.stochastic
        assert torch.all(step.log_prob[deterministic] == 0)
        assert torch.equal(step.action[deterministic], step.mean[deterministic])
        latents = step.action


def test_zero_variance_trap_is_detected() -> None:
    scheduler = sd_scheduler(10, steps_offset=0)  # last timestep is 0, stepping to alphas_cumprod[0]
    coefficients = ddim_step_coefficients(scheduler, scheduler.timesteps[-1], eta=1.0)
    assert coefficients.std_dev_t == 0
    assert not coefficients.is_stochastic
    with pytest.raises(ValueError, match="deterministic"):
        ddim_step_log_prob(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), coefficients.std_dev_t)
    # Stable Diffusion's own config keeps the last step stochastic.
    sd = sd_scheduler(10)
    assert ddim_step_coefficients(sd, sd.timesteps[-1], eta=1.0).std_dev_t > MIN_STD


def test_clip_sample_is_refused_for_latent_models() -> None:
    with pytest.raises(ValueError, match="clip_sample=False"):
        check_scheduler_config(DDIMScheduler())  # diffusers' default is clip_sample=True
    check_scheduler_config(sd_scheduler())


def test_negative_eta_is_refused() -> None:
    with pytest.raises(ValueError, match="eta"):
        ddim_step_coefficients(sd_scheduler(), 1, eta=-0.5)


# Zero terminal SNR (Lin et al., 2024), as the Shapes world trains and samples: v-prediction, trailing spacing.
ZERO_SNR = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_zero_terminal_snr_mean_matches_diffusers(eta: float) -> None:
    scheduler = sd_scheduler(10, steps_offset=0, **ZERO_SNR)
    assert scheduler.timesteps[0] == 999 and scheduler.alphas_cumprod[999] == 0
    torch.manual_seed(0)
    for timestep in scheduler.timesteps:
        sample, model_output = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        coefficients = ddim_step_coefficients(scheduler, timestep, eta)
        mean, _ = ddim_step_mean(sample, model_output, coefficients, "v_prediction")
        expected = scheduler.step(model_output, timestep, sample, eta=eta, variance_noise=torch.zeros_like(sample))
        if eta == 1.0 and float(coefficients.alpha_prod_t) == 0.0 and expected.prev_sample.isnan().all():
            # At alpha_bar_t = 0 with eta = 1, 1 - alpha_bar_prev - sigma_t^2 is exactly 0. diffusers (seen with
            # 0.42.1 on torch 2.14.1) squares sqrt(sigma_t^2) back, gets -6e-8 and returns NaN from its sqrt. This
            # step is checked by hand in test_zero_terminal_snr_first_step_by_hand; here ours must stay finite.
            assert torch.isfinite(mean).all()
            continue
        torch.testing.assert_close(mean, expected.prev_sample, rtol=1e-4, atol=1e-4)


def test_zero_terminal_snr_first_step_by_hand() -> None:
    """At alpha_bar_t = 0 with eta = 1: sigma^2 = 1 - alpha_bar_prev, mean = sqrt(alpha_bar_prev) * (-v)."""
    scheduler = sd_scheduler(10, steps_offset=0, **ZERO_SNR)
    coefficients = ddim_step_coefficients(scheduler, 999, eta=1.0)
    alpha_prod_prev = float(scheduler.alphas_cumprod[899])
    assert float(coefficients.alpha_prod_t) == 0.0
    assert float(coefficients.std_dev_t) == pytest.approx((1 - alpha_prod_prev) ** 0.5, rel=1e-6)
    sample, velocity = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mean, pred_original_sample = ddim_step_mean(sample, velocity, coefficients, "v_prediction")
    torch.testing.assert_close(pred_original_sample, -velocity)  # x_0 = sqrt(a) x_t - sqrt(1 - a) v at a = 0
    # The "direction to x_t" term is 0 up to float32 round-off of 1 - a_prev - sigma^2, which the sqrt amplifies.
    torch.testing.assert_close(mean, alpha_prod_prev**0.5 * -velocity, rtol=0, atol=2e-3)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_zero_terminal_snr_log_probs_are_finite(steps: int) -> None:
    scheduler = sd_scheduler(steps, steps_offset=0, **ZERO_SNR)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    for timestep in scheduler.timesteps:
        step = ddim_policy_step(scheduler, torch.randn(2, 4, 8, 8), latents, timestep.repeat(2), 1.0, generator)
        assert step.stochastic.all() and torch.isfinite(step.log_prob).all() and torch.isfinite(step.action).all()
        latents = step.action


def test_zero_terminal_snr_with_epsilon_prediction_is_refused() -> None:
    check_scheduler_config(sd_scheduler(**ZERO_SNR))
    with pytest.raises(ValueError, match="zero_snr.*epsilon"):
        check_scheduler_config(sd_scheduler(**{**ZERO_SNR, "prediction_type": "epsilon"}))

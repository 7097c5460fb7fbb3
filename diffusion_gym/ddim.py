r"""The DDIM step as a Gaussian policy: its mean, its standard deviation and its exact log-probability.

This is the DDPO ``ddim_step_with_logprob`` idea written as small pure functions, so that the environment's
users and the agents share one implementation. Notation follows DDIM (Song et al., 2021, eq. 12) and
``diffusers.DDIMScheduler.step``:

.. math::

    x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0
              + \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\;\hat\epsilon
              + \sigma_t z, \qquad z \sim \mathcal N(0, I)

    \sigma_t = \eta \sqrt{\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}}\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t-1}}}

so that with :math:`\eta > 0` the policy :math:`\pi(x_{t-1} \mid x_t, c)` is an isotropic Gaussian with mean
:math:`\mu_\theta(x_t, t, c)` (everything but the noise term) and standard deviation :math:`\sigma_t`.

Conventions
-----------
* **Log-probabilities are sums over all latent dimensions** (the exact log-density of the action, in nats),
  one value per batch element. Divide by ``C * H * W`` yourself if you want DDPO's per-dimension mean.
* **Zero terminal SNR works as is.** With ``rescale_betas_zero_snr`` and "trailing" spacing the first step
  has :math:`\bar\alpha_t = 0`: :math:`\sigma_t^2 = \eta^2 (1 - \bar\alpha_{t-1})`, and with
  :math:`\eta = 1` the step is :math:`x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sigma_t z`, a proper
  Gaussian. Only v- or x_0-prediction can give :math:`\hat x_0` there; :func:`check_scheduler_config`
  refuses epsilon-prediction on such a schedule.
* **Zero-variance steps are deterministic.** :math:`\sigma_t = 0` whenever :math:`\bar\alpha_{t-1} =
  \bar\alpha_t` (``t = 0`` stepping to ``alphas_cumprod[0]``) or :math:`\bar\alpha_{t-1} = 1`
  (``set_alpha_to_one=True``) or :math:`\eta = 0`. Such a step has no density: its log-prob would be
  ``nan``/``inf`` and one gradient step on it destroys a model. We call a step *stochastic* only when
  ``std_dev_t >= MIN_STD``; a policy takes the mean as its action on the other steps, and they are left
  out of every log-prob and loss. :func:`ddim_step_log_prob` raises rather than return a non-finite value.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

# Below this standard deviation a step is treated as deterministic (see the module docstring).
MIN_STD = 1e-3

_LOG_2PI = float(torch.log(torch.tensor(2 * torch.pi)))


@dataclass(frozen=True)
class DDIMStepCoefficients:
    """The scalars of one DDIM step ``t -> prev_t`` (each a 0-d or ``(B,)`` float tensor)."""

    alpha_prod_t: torch.Tensor  # \bar\alpha_t
    alpha_prod_t_prev: torch.Tensor  # \bar\alpha_{t-1}
    std_dev_t: torch.Tensor  # \sigma_t (already multiplied by eta)

    @property
    def is_stochastic(self) -> torch.Tensor:
        """Boolean tensor: True where the step has a usable density (``std_dev_t >= MIN_STD``)."""
        return self.std_dev_t >= MIN_STD


def check_scheduler_config(scheduler) -> None:
    """Refuse scheduler settings that silently break a latent diffusion policy.

    ``clip_sample=True`` clips the predicted :math:`\\hat x_0` to ``[-1, 1]``: right for pixel models, wrong for
    unit-variance latents (samples come out as colourless blobs). Thresholding is likewise a pixel-space tool.
    """
    config = scheduler.config
    if config.get("clip_sample", False):
        raise ValueError(
            "the scheduler has clip_sample=True, which clips predicted latents to [-1, 1]; latent diffusion "
            "models need clip_sample=False (Stable Diffusion's own scheduler config sets it)"
        )
    if config.get("thresholding", False):
        raise ValueError("dynamic thresholding is not supported for latent diffusion policies")
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    if config.get("rescale_betas_zero_snr", False) and prediction_type == "epsilon":
        # alpha_bar_T = 0: x_0 = (x_T - sqrt(1 - alpha_bar_T) eps) / sqrt(alpha_bar_T) divides by zero
        raise ValueError(
            "rescale_betas_zero_snr=True with prediction_type='epsilon': at the zero-SNR step the predicted "
            "x_0 divides by sqrt(alpha_bar_T) = 0; zero-terminal-SNR models predict v (Lin et al., 2024)"
        )


def check_eta(eta: object) -> float:
    r"""``eta`` as a float if it is a real number in [0, 1]; else ``TypeError`` (not a number, or a bool) or
    ``ValueError`` (NaN, below 0, above 1).

    :math:`\sigma_t` grows with :math:`\eta`, and above 1 :math:`\sigma_t^2` can exceed :math:`1 - \bar\alpha_{t-1}`:
    the "direction pointing to :math:`x_t`" then has no real coefficient (with a zero-terminal-SNR schedule, at every
    step from :math:`t = T`). :math:`\eta = 1` is DDPM's variance; :math:`\eta = 0` is deterministic DDIM.
    """
    if not isinstance(eta, numbers.Real) or isinstance(eta, bool):
        raise TypeError(f"eta must be a number in [0, 1] (DDIM's noise scale), got {type(eta).__name__}: {eta!r}")
    if not 0 <= eta <= 1:  # NaN fails too
        raise ValueError(
            f"eta must be a number in [0, 1] (DDIM's noise scale: 1 is DDPM's variance, 0 deterministic DDIM), got "
            f"{eta!r}; above 1 the step's noise variance exceeds 1 - alpha_bar_prev and DDIM's direction term has no "
            "real coefficient"
        )
    return float(eta)


def previous_timestep(scheduler, timestep: torch.Tensor | int) -> torch.Tensor:
    """``prev_t = t - num_train_timesteps // num_inference_steps``, as ``DDIMScheduler.step`` computes it."""
    step_ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return torch.as_tensor(timestep) - step_ratio


def ddim_step_coefficients(
    scheduler, timestep: torch.Tensor | int, eta: float, device: torch.device | None = None
) -> DDIMStepCoefficients:
    """The step's :math:`\\bar\\alpha_t`, :math:`\\bar\\alpha_{t-1}`, :math:`\\sigma_t`; ``t`` is 0-d or ``(B,)``."""
    check_eta(eta)
    timestep = torch.as_tensor(timestep, dtype=torch.long).cpu()
    prev_t = previous_timestep(scheduler, timestep)
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)

    alpha_prod_t = alphas_cumprod[timestep]
    alpha_prod_t_prev = torch.where(prev_t >= 0, alphas_cumprod[prev_t.clamp(min=0)], final_alpha_cumprod)
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    # DDIM eq. (16): sigma_t^2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev); clamp tiny negative round-off
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance.clamp(min=0).sqrt()
    to = {"dtype": torch.float32, "device": device}
    return DDIMStepCoefficients(alpha_prod_t.to(**to), alpha_prod_t_prev.to(**to), std_dev_t.to(**to))


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a 0-d or ``(B,)`` tensor against ``like`` of shape ``(B, ...)``."""
    value = value.to(device=like.device, dtype=like.dtype)
    return value.reshape(value.shape + (1,) * (like.ndim - value.ndim))  # (B, 1, 1, 1)


def ddim_step_mean(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: DDIMStepCoefficients,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean :math:`\\mu` of :math:`\\pi(x_{t-1} \\mid x_t)` and the predicted :math:`\\hat x_0`.

    ``sample`` is :math:`x_t` and ``model_output`` the (guided) UNet output, both ``(B, C, H, W)``.
    """
    alpha_prod_t = _per_sample(coefficients.alpha_prod_t, sample)
    alpha_prod_t_prev = _per_sample(coefficients.alpha_prod_t_prev, sample)
    std_dev_t = _per_sample(coefficients.std_dev_t, sample)
    beta_prod_t = 1 - alpha_prod_t

    # DDIM eq. (12), "predicted x_0" and the noise it implies
    if prediction_type == "epsilon":
        pred_epsilon = model_output
        pred_original_sample = (sample - beta_prod_t.sqrt() * pred_epsilon) / alpha_prod_t.sqrt()
    elif prediction_type == "v_prediction":
        pred_original_sample = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        pred_epsilon = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t.sqrt() * pred_original_sample) / beta_prod_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")

    # DDIM eq. (12), "direction pointing to x_t"; then x_{t-1} without its noise term
    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2).clamp(min=0).sqrt() * pred_epsilon
    prev_sample_mean = alpha_prod_t_prev.sqrt() * pred_original_sample + pred_sample_direction
    return prev_sample_mean, pred_original_sample


def ddim_step_log_prob(
    prev_sample: torch.Tensor, prev_sample_mean: torch.Tensor, std_dev_t: torch.Tensor
) -> torch.Tensor:
    r"""Exact :math:`\log \mathcal N(x_{t-1};\ \mu,\ \sigma_t^2 I)`, **summed** over latent dims: ``(B,)``.

    .. math:: \log\pi = -\frac{\lVert x_{t-1}-\mu\rVert^2}{2\sigma_t^2} - d\log\sigma_t - \frac d2\log 2\pi

    Raises ``ValueError`` for a step with ``std_dev_t < MIN_STD`` (a deterministic step has no density).
    """
    std_dev_t = torch.as_tensor(std_dev_t, dtype=prev_sample_mean.dtype, device=prev_sample_mean.device)
    if bool((std_dev_t < MIN_STD).any()):
        raise ValueError(
            f"ddim_step_log_prob got std_dev_t={std_dev_t.min().item():.3g} < MIN_STD={MIN_STD}: this step is "
            "deterministic and has no log-probability; leave it out (see DDIMStepCoefficients.is_stochastic)"
        )
    std = _per_sample(std_dev_t, prev_sample_mean)
    num_dims = prev_sample_mean[0].numel()
    squared_error = ((prev_sample.detach() - prev_sample_mean) ** 2).flatten(1).sum(dim=1)  # (B,)
    std_flat = std.flatten(1)[:, 0] if std.ndim > 1 else std  # (B,) or 0-d
    return -squared_error / (2 * std_flat**2) - num_dims * (std_flat.log() + 0.5 * _LOG_2PI)


def ddim_step_kl(mean_policy: torch.Tensor, mean_reference: torch.Tensor, std_dev_t: torch.Tensor) -> torch.Tensor:
    r"""Closed-form :math:`\mathrm{KL}(\mathcal N(\mu_\theta, \sigma^2 I)\,\|\,\mathcal N(\mu_{ref}, \sigma^2 I))`,
    summed over latent dims: :math:`\lVert\mu_\theta-\mu_{ref}\rVert^2 / (2\sigma_t^2)`, ``(B,)``.

    Both steps share :math:`\sigma_t` (it depends on the schedule only), which is what makes the DPOK per-step
    KL bound closed-form.
    """
    std_dev_t = torch.as_tensor(std_dev_t, dtype=mean_policy.dtype, device=mean_policy.device)
    if bool((std_dev_t < MIN_STD).any()):
        raise ValueError(f"ddim_step_kl got std_dev_t < MIN_STD={MIN_STD}: a deterministic step has no KL")
    std = _per_sample(std_dev_t, mean_policy).flatten(1)[:, 0] if std_dev_t.ndim else std_dev_t
    return ((mean_policy - mean_reference) ** 2).flatten(1).sum(dim=1) / (2 * std**2)

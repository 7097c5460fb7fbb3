r"""The math every agent shares, as small pure functions (hand-checked in ``tests/test_agents_math.py``).

Notation (DDPO, Black et al.; PPO, Schulman et al.): a trajectory is :math:`x_T \to \dots \to x_0` for a
prompt :math:`c`; the policy's step :math:`\pi_\theta(x_{t-1} \mid x_t, c)` is Gaussian (DDIM with
:math:`\eta > 0`); :math:`r(x_0, c)` is the terminal reward and :math:`A` an advantage.

**Log-probabilities are sums over the latent dims** (the env's convention, :mod:`diffusion_gym.ddim`), not
DDPO's per-dimension mean. The per-step log-ratio is therefore ``C*H*W`` times DDPO's, so the PPO ratio is
much sharper: a clip range of ``eps`` here is about ``eps / (C*H*W)`` in DDPO's units.

**Shapes are checked, not broadcast** (as rlax's ``chex`` asserts): the per-sample inputs of a function must
have the documented rank and one common shape, else ``ValueError`` names the argument and the shapes. E.g. a
``(N, 1)`` advantage against ``(N,)`` log-probs would broadcast to an ``(N, N)`` objective.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from agents.config import OPTIMALITY_SCALES
from diffusion_gym.ddim import MIN_STD, ddim_step_kl, ddim_step_log_prob

__all__ = [
    "MIN_STD",
    "check_shapes",
    "PerPromptStatTracker",
    "clip_advantages",
    "cosine_decay_factor",
    "gaussian_step_kl",
    "leave_one_out_baseline",
    "nft_loss",
    "normalize_advantages",
    "OPTIMALITY_SCALES",
    "optimality_probabilities",
    "ppo_clipped_loss",
    "reward_weights",
    "sample_train_timesteps",
    "step_log_prob",
    "stratified_timesteps",
]


def check_shapes(ndim: int, **tensors: torch.Tensor) -> None:
    """``ValueError`` unless every tensor has ``ndim`` dims and all share one shape (named in the message)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    wrong_rank = {name: shape for name, shape in shapes.items() if len(shape) != ndim}
    if wrong_rank:
        raise ValueError(f"expected {ndim}-d tensors, got shapes {wrong_rank}")
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match (no broadcasting), got {shapes}")


# The log-ratio is clamped before exp() so that a far off-policy sample (HERD's relabeled trajectories) gives
# a large but finite ratio; every clamped term is clipped anyway (see ppo_clipped_loss), so no gradient is lost.
MAX_LOG_RATIO = 20.0


# ------------------------------------------------------------------------------------------ per-step Gaussians
def step_log_prob(action: torch.Tensor, mean: torch.Tensor, std_dev_t: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\pi(x_{t-1} \mid x_t, c)` summed over latent dims, ``(B,)`` (``ddim.ddim_step_log_prob``);
    ``action`` and ``mean`` are ``(B, C, H, W)`` (checked)."""
    check_shapes(4, action=action, mean=mean)
    return ddim_step_log_prob(action, mean, std_dev_t)


def gaussian_step_kl(mean_policy: torch.Tensor, mean_reference: torch.Tensor, std_dev_t: torch.Tensor) -> torch.Tensor:
    r"""DPOK's per-step :math:`\mathrm{KL}(\pi_\theta \| \pi_{pre}) = \lVert\mu_\theta - \mu_{pre}\rVert^2/2\sigma_t^2`.

    Returns ``(B,)``.

    ``mean_policy`` and ``mean_reference`` are ``(B, C, H, W)`` (checked). A thin wrapper of
    :func:`diffusion_gym.ddim.ddim_step_kl` (both steps share :math:`\sigma_t`).
    """
    check_shapes(4, mean_policy=mean_policy, mean_reference=mean_reference)
    return ddim_step_kl(mean_policy, mean_reference, std_dev_t)


# ------------------------------------------------------------------------------------------ PPO
def ppo_clipped_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""PPO's clipped surrogate, as a loss to minimise; returns ``(loss, clipfrac, approx_kl)`` (0-d tensors).

    .. math::

        \rho = \exp(\log\pi_\theta - \log\pi_{old}), \qquad
        L = -\,\mathbb E\big[\min(\rho A,\ \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon) A)\big]

    With ``dual_clip = c > 1`` (dual-clip PPO, Ye et al. 2020) the objective of a negative advantage is also
    bounded below, :math:`\max(\min(\rho A, \mathrm{clip}(\rho) A),\ c A)`, so a sample whose ratio exploded
    (an off-policy sample) cannot dominate the update. ``clipfrac`` is the fraction of terms with
    :math:`|\rho - 1| > \epsilon`; ``approx_kl`` is DDPO's :math:`\tfrac12\mathbb E[(\log\rho)^2]`.
    All inputs are ``(N,)`` (checked: no broadcasting); ``old_log_probs`` and ``advantages`` are treated as
    constants.
    """
    check_shapes(1, log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages)
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    log_ratio = log_probs - old_log_probs.detach()  # (N,)
    ratio = torch.exp(log_ratio.clamp(max=MAX_LOG_RATIO))  # (N,)
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    objective = torch.minimum(unclipped, clipped)  # (N,)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        objective = torch.where(advantages < 0, torch.maximum(objective, dual_clip * advantages), objective)
    loss = -objective.mean()
    with torch.no_grad():
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
        approx_kl = 0.5 * (log_ratio**2).mean()
    return loss, clipfrac, approx_kl


# ------------------------------------------------------------------------------------------ advantages
def normalize_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Batch-wide :math:`A_i = (r_i - \bar r) / (\mathrm{std}(r) + \epsilon)` (population std), ``(N,)``."""
    check_shapes(1, rewards=rewards)
    rewards = rewards.double()
    return ((rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)).float()


def clip_advantages(advantages: torch.Tensor, max_abs: float) -> torch.Tensor:
    """DDPO's advantage clipping to ``[-max_abs, max_abs]``."""
    return advantages.clamp(-max_abs, max_abs)


def reward_weights(advantages: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Reward-weighted regression's self-normalised weights, ``(N,)`` with mean 1.

    .. math:: w_i = \frac{\exp(A_i / \tau)}{\frac1N \sum_j \exp(A_j / \tau)}

    (Peters & Schaal's RWR; DDPO's RWR baseline weights by :math:`\exp(\beta r)`). A small temperature
    :math:`\tau` puts the weight on the best samples (RAFT-like); a large one trains on every sample alike.
    The max is subtracted before ``exp`` for stability (the ratio is unchanged).
    """
    check_shapes(1, advantages=advantages)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = advantages.double() / temperature  # (N,)
    unnormalised = (logits - logits.max()).exp()  # (N,), in (0, 1]
    return (unnormalised / unnormalised.mean()).float()


class PerPromptStatTracker:
    r"""Per-prompt reward normalisation, as DDPO's and TRL's ``PerPromptStatTracker``.

    Each prompt keeps its last ``buffer_size`` rewards. :meth:`update` adds a batch's rewards, then
    normalises each reward with its prompt's buffer mean/std, or, while the prompt has fewer than
    ``min_count`` rewards, with the mean/std of the whole batch passed in.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Advantages ``(N,)`` for ``rewards`` ``(N,)`` of ``prompts`` (and remember the rewards)."""
        check_shapes(1, rewards=rewards)
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {rewards.shape[0]} rewards")
        rewards = rewards.detach().double().cpu()
        batch_mean, batch_std = rewards.mean(), rewards.std(unbiased=False)
        advantages = torch.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):  # unique, in order of first appearance
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[rows].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                history = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = history.mean(), history.std(unbiased=False)
            advantages[rows] = (rewards[rows] - mean) / (std + eps)
        return advantages.float()

    def state_dict(self) -> dict[str, list[float]]:
        return {prompt: list(buffer) for prompt, buffer in self.stats.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.stats = {prompt: deque(values, maxlen=self.buffer_size) for prompt, values in state.items()}


def leave_one_out_baseline(rewards: torch.Tensor, groups: list[str] | None = None) -> torch.Tensor:
    r"""LOOP's baseline :math:`b_i = \frac{1}{K-1}\sum_{j \ne i} r_j` over the other samples of ``i``'s group.

    ``rewards`` is ``(G, K)`` (``K`` samples of each of ``G`` prompts), or ``(N,)`` with one group label per
    sample in ``groups``. A group of one sample has no "others": its baseline is the mean of all rewards.
    Returns the baselines, same shape as ``rewards``.
    """
    if groups is None:
        if rewards.ndim != 2 or rewards.shape[1] < 2:
            raise ValueError(f"rewards must be (G, K) with K >= 2 when no groups are given, got {tuple(rewards.shape)}")
        total = rewards.sum(dim=1, keepdim=True)  # (G, 1)
        return (total - rewards) / (rewards.shape[1] - 1)  # (G, K)
    if rewards.ndim != 1 or len(groups) != rewards.shape[0]:
        raise ValueError(f"got {len(groups)} group labels for rewards of shape {tuple(rewards.shape)}")
    baseline = torch.full_like(rewards, float(rewards.mean()))
    for group in dict.fromkeys(groups):
        rows = torch.tensor([i for i, g in enumerate(groups) if g == group])
        if len(rows) >= 2:
            baseline[rows] = (rewards[rows].sum() - rewards[rows]) / (len(rows) - 1)
    return baseline


# ------------------------------------------------------------------------------------------ learning rate
def cosine_decay_factor(epoch: int, decay_epochs: int, final_fraction: float) -> float:
    r"""The learning-rate multiplier of a cosine decay (Loshchilov & Hutter's SGDR, one cycle, no restart) for the
    epoch after ``epoch`` epochs done:

    .. math:: f(e) = f_{final} + (1 - f_{final}) \, \frac{1 + \cos(\pi \min(e, E) / E)}{2},

    1 at ``e = 0``, ``final_fraction`` from ``e = E = decay_epochs`` on (held there, so a run extended past
    ``E`` keeps training at the final rate).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if decay_epochs < 1:
        raise ValueError(f"decay_epochs must be >= 1, got {decay_epochs}")
    if not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")
    progress = min(epoch, decay_epochs) / decay_epochs  # in [0, 1]
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------ timesteps
def sample_train_timesteps(
    stochastic: torch.Tensor, num_samples: int, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """DDPO's timestep subsampling: for each sample, a random ``fraction`` of the stochastic steps.

    ``stochastic`` is ``(T,)`` bool. Returns step indices ``(num_samples, k)``, ``k = ceil(fraction * S)``
    for ``S`` stochastic steps; each row is an independent random choice without replacement, in random order.
    """
    check_shapes(1, stochastic=stochastic)
    if stochastic.dtype != torch.bool:
        raise ValueError(f"stochastic must be a bool tensor, got {stochastic.dtype}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    candidates = torch.nonzero(stochastic).flatten()  # (S,)
    if candidates.numel() == 0:
        raise ValueError("no stochastic step to train on (eta = 0 or a degenerate schedule)")
    k = max(1, math.ceil(fraction * candidates.numel()))
    order = torch.argsort(torch.rand(num_samples, candidates.numel(), generator=generator), dim=1)  # (N, S)
    return candidates[order[:, :k]]  # (N, k)


# ------------------------------------------------------------------------------------------ forward-process RL (NFT)
def optimality_probabilities(
    rewards: torch.Tensor, groups: list[str] | None = None, scale: str = "max-deviation"
) -> torch.Tensor:
    r"""DiffusionNFT's optimality probability :math:`r_i \in [0, 1]` of each sample, ``(N,)``, from rewards ``(N,)``:

    .. math:: r_i = \tfrac12 + \tfrac12\, \frac{R_i - \bar R}{\max_j |R_j - \bar R|}

    over the sample's group (``groups``: one label per sample, e.g. its prompt; ``None``: the whole batch). Dividing
    by the largest absolute deviation keeps :math:`r` in :math:`[0, 1]` without clipping: the group's best sample
    gets the largest :math:`r` (1 when it is the farthest from the mean), and equal rewards all get 0.5 (no signal).
    A standard-deviation normalisation clipped to :math:`[-1, 1]` instead pushes most samples to 0 or 1 once the
    batch's reward spread shrinks (issue 31: 4 of 6 runs collapsed). A group of one sample is normalised against
    the whole batch (its mean and largest deviation), as :func:`leave_one_out_baseline` falls back.

    ``scale="two-std"``: :math:`r_i = \tfrac12 + \tfrac12\,\mathrm{clip}\big((R_i - \bar R) / (2\sigma), -1, 1\big)`
    with :math:`\sigma` the group's population standard deviation: two standard deviations reach 0 or 1, so most
    samples keep a push proportional to their advantage instead of the extreme sample setting the scale for all
    (the middle ground between the two normalisations above; docs/experiments/2026-12-07-nft.md).
    """
    if scale not in OPTIMALITY_SCALES:
        raise ValueError(f"scale must be one of {OPTIMALITY_SCALES}, got {scale!r}")
    check_shapes(1, rewards=rewards)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    if groups is not None and len(groups) != rewards.shape[0]:
        raise ValueError(f"got {len(groups)} group labels for {rewards.shape[0]} rewards")
    rewards = rewards.detach().double().cpu()

    def spread(values: torch.Tensor) -> torch.Tensor:
        """The normaliser of a group's rewards: its largest absolute deviation, or two standard deviations."""
        deviations = values - values.mean()
        return deviations.abs().max() if scale == "max-deviation" else 2 * deviations.pow(2).mean().sqrt()

    def scaled(values: torch.Tensor, mean: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
        if float(normaliser) == 0.0:
            return torch.full_like(values, 0.5)
        return 0.5 + 0.5 * ((values - mean) / normaliser).clamp(-1.0, 1.0)  # no clip at max-deviation: |.| <= 1

    optimality = scaled(rewards, rewards.mean(), spread(rewards))  # (N,): batch-wide (also each lone sample's)
    if groups is not None:
        for group in dict.fromkeys(groups):
            rows = torch.tensor([i for i, g in enumerate(groups) if g == group])
            if len(rows) >= 2:
                optimality[rows] = scaled(rewards[rows], rewards[rows].mean(), spread(rewards[rows]))
    return optimality.float()


def nft_loss(
    prediction: torch.Tensor,
    old_prediction: torch.Tensor,
    target: torch.Tensor,
    optimality: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""DiffusionNFT's loss (Zheng et al., 2025), for any prediction affine in the model output (:math:`\epsilon`,
    :math:`v` or flow velocity; ``docs/agents.md`` derives why the form is the same). Returns ``(loss, positive_error,
    negative_error)``: the 0-d loss and the two per-sample squared errors ``(B,)``.

    .. math::

        f^+ = (1 - \beta) f_{old} + \beta f_\theta, \qquad f^- = (1 + \beta) f_{old} - \beta f_\theta, \qquad
        L = \frac1B \sum_i r_i \lVert f^+_i - y_i \rVert^2 + (1 - r_i) \lVert f^-_i - y_i \rVert^2

    with the squared errors averaged over the latent dims (the diffusion loss's convention). ``prediction``
    :math:`f_\theta`, ``old_prediction`` :math:`f_{old}` (the sampling policy's, treated as a constant) and ``target``
    :math:`y` are ``(B, C, H, W)`` (checked); ``optimality`` :math:`r \in [0, 1]` is ``(B,)``. At :math:`\theta =
    \theta_{old}` the gradient in :math:`f_\theta` is :math:`2\beta(2r - 1)(f_{old} - y)/(B \cdot CHW)`: toward the
    target where :math:`r > 1/2`, away from it where :math:`r < 1/2`.
    """
    check_shapes(4, prediction=prediction, old_prediction=old_prediction, target=target)
    check_shapes(1, optimality=optimality)
    if optimality.shape[0] != prediction.shape[0]:
        raise ValueError(f"got {optimality.shape[0]} optimality values for {prediction.shape[0]} predictions")
    if not bool(((optimality >= 0) & (optimality <= 1)).all()):
        raise ValueError(f"optimality must be in [0, 1], got {optimality.tolist()}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    old_prediction, target, optimality = old_prediction.detach(), target.detach(), optimality.detach()
    positive = (1.0 - beta) * old_prediction + beta * prediction  # (B, C, H, W)
    negative = (1.0 + beta) * old_prediction - beta * prediction  # (B, C, H, W)
    positive_error = (positive - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    negative_error = (negative - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    loss = (optimality * positive_error + (1.0 - optimality) * negative_error).mean()
    return loss, positive_error.detach(), negative_error.detach()


def stratified_timesteps(num_samples: int, count: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` training timesteps per sample, ``(num_samples, count)`` int64 in ``[low, high)``: the range cut into
    ``count`` equal strata, one uniform draw in each (sorted, noisiest last), so that every sample is trained at
    low, middle and high noise alike; draws differ between samples."""
    if num_samples < 1 or count < 1:
        raise ValueError(f"num_samples and count must be >= 1, got {num_samples}, {count}")
    if not 0 <= low < high or high - low < count:
        raise ValueError(
            f"need 0 <= low < high with at least count={count} timesteps in [low, high), got [{low}, {high})"
        )
    edges = torch.linspace(float(low), float(high), count + 1, dtype=torch.float64)  # (count + 1,)
    width = edges[1:] - edges[:-1]  # (count,)
    uniform = torch.rand(num_samples, count, generator=generator, dtype=torch.float64)  # (N, count)
    timesteps = (edges[:-1] + uniform * width).floor().long()  # (N, count)
    return timesteps.clamp(low, high - 1)

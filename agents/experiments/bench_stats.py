"""The bench's statistics: rliable's interquartile mean, stratified bootstrap CIs, probability of improvement and
performance profiles (Agarwal et al., NeurIPS 2021), plus the small pure functions around them: gold normalised
between the base model and a task's ceiling, the normalised area under the gold curve, and the minimum detectable
effect of a paired comparison.

rliable (and its arch/seaborn dependencies) is the ``bench`` extra: ``pip install -e '.[bench]'``; it is imported
only when a bootstrap runs. Every bootstrap is seeded (:data:`BOOTSTRAP_SEED`), so a leaderboard regenerated from
the same runs is identical.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_SEED = 0
BOOTSTRAP_REPS = 2000  # rliable's default is 50 000; 2000 resolves a 95% percentile interval to about +-0.005


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% confidence interval."""

    point: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.point:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def _rliable():
    try:
        from absl import logging as absl_logging
        from rliable import library, metrics
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the bench's statistics need rliable: pip install -e '.[bench]' (rliable==1.2.0)") from error
    absl_logging.set_verbosity(absl_logging.WARNING)  # rliable logs every estimate at INFO
    return library, metrics


@contextmanager
def _seeded_bootstrap(seed: int):
    """rliable 1.2's stratified bootstraps draw their indices from numpy's global RNG (``np.random.choice``),
    whatever ``random_state`` says: seed it for the call and restore it after. rliable also passes
    ``random_state`` to arch, which arch 7 deprecates with a FutureWarning (silenced here)."""
    state = np.random.get_state()  # noqa: NPY002  (rliable draws from the legacy global RNG)
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _scores_matrix(scores: np.ndarray | Sequence, name: str) -> np.ndarray:
    """``scores`` as a float matrix ``(runs, tasks)``: a 1-D sequence is one task's runs. ``ValueError`` if empty,
    of another rank, or not finite."""
    array = np.asarray(scores, dtype=float)
    if array.ndim == 1:
        array = array[:, None]  # (runs,) -> (runs, 1)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must be (runs,) or (runs, tasks) with at least one run, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or inf values: {array.tolist()}")
    return array


def iqm(scores: np.ndarray | Sequence) -> float:
    """rliable's interquartile mean of a ``(runs, tasks)`` matrix (or one task's runs): the mean of the middle 50%
    of all scores (scipy's ``trim_mean`` at 0.25)."""
    _, metrics = _rliable()
    return float(metrics.aggregate_iqm(_scores_matrix(scores, "scores")))


def iqm_interval(
    scores: np.ndarray | Sequence, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED, confidence: float = 0.95
) -> Interval:
    """The IQM of ``scores`` ``(runs, tasks)`` with its stratified bootstrap (runs resampled within each task)
    percentile confidence interval; one run gives a zero-width interval."""
    library, metrics = _rliable()
    matrix = _scores_matrix(scores, "scores")
    with _seeded_bootstrap(seed):
        points, intervals = library.get_interval_estimates(
            {"x": matrix},
            lambda x: np.array([metrics.aggregate_iqm(x)]),
            reps=reps,
            confidence_interval_size=confidence,
            random_state=np.random.RandomState(seed),
        )
    return Interval(float(points["x"][0]), float(intervals["x"][0, 0]), float(intervals["x"][1, 0]))


def probability_of_improvement(
    scores_x: np.ndarray | Sequence,
    scores_y: np.ndarray | Sequence,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> Interval:
    """P(X > Y): rliable's probability that a run of X scores higher than a run of Y on a task (ties count 1/2),
    averaged over tasks, with its stratified independent bootstrap CI. ``(runs, tasks)`` each, the same tasks."""
    library, metrics = _rliable()
    x, y = _scores_matrix(scores_x, "scores_x"), _scores_matrix(scores_y, "scores_y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"scores_x and scores_y must cover the same tasks, got shapes {x.shape} and {y.shape}")
    with _seeded_bootstrap(seed):
        points, intervals = library.get_interval_estimates(
            {"x,y": (x, y)},
            lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
            reps=reps,
            confidence_interval_size=confidence,
            random_state=np.random.RandomState(seed),
        )
    return Interval(float(points["x,y"][0]), float(intervals["x,y"][0, 0]), float(intervals["x,y"][1, 0]))


@dataclass(frozen=True)
class PerformanceProfile:
    """The fraction of runs scoring above each threshold ``tau``, with its bootstrap band, per agent."""

    taus: np.ndarray  # (K,)
    fractions: dict[str, np.ndarray]  # agent -> (K,)
    low: dict[str, np.ndarray]  # agent -> (K,)
    high: dict[str, np.ndarray]


def performance_profiles(
    scores: Mapping[str, np.ndarray], taus: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
) -> PerformanceProfile:
    """rliable's run-score performance profiles of ``scores`` (agent -> ``(runs, tasks)``) at thresholds ``taus``:
    the fraction of runs scoring above each ``tau``, with its stratified bootstrap band."""
    library, _ = _rliable()
    matrices = {name: _scores_matrix(values, f"scores[{name!r}]") for name, values in scores.items()}
    taus = np.asarray(taus, dtype=float)
    if taus.ndim != 1 or len(taus) < 2:
        raise ValueError(f"taus must be a 1-D array of at least 2 thresholds, got shape {taus.shape}")
    # rliable's create_performance_profile (score distributions) without a seed argument: the same function,
    # library.run_score_deviation (the fraction of runs above tau), through the seeded interval estimates
    with _seeded_bootstrap(seed):
        profiles, cis = library.get_interval_estimates(
            matrices,
            lambda x: np.array([library.run_score_deviation(x, tau) for tau in taus]),
            reps=reps,
            random_state=np.random.RandomState(seed),
        )
    return PerformanceProfile(
        taus,
        {name: np.asarray(profiles[name]) for name in matrices},
        {name: np.asarray(cis[name][0]) for name in matrices},
        {name: np.asarray(cis[name][1]) for name in matrices},
    )


# ----------------------------------------------------------------------------------------------- pure functions
def normalised_gold(gold: np.ndarray | float, base: np.ndarray | float, ceiling: float) -> np.ndarray:
    """``(gold - base) / (ceiling - base)``: 0 at the base model, 1 at the task's ceiling (broadcast elementwise).
    ``ValueError`` if some base is at or above the ceiling (nothing left to normalise by)."""
    gold, base = np.asarray(gold, dtype=float), np.asarray(base, dtype=float)
    room = ceiling - base
    if np.any(room <= 0):
        raise ValueError(f"the base gold {base.tolist()} must be below the ceiling {ceiling}")
    return (gold - base) / room


def normalised_auc(samples: Sequence[float], gold: Sequence[float], base: float, ceiling: float) -> float:
    """The area under the held-out gold curve, normalised: the mean over the budget of the normalised gold gain.

    ``samples`` ``(P,)`` are the fresh samples at each evaluation (increasing, > 0) and ``gold`` ``(P,)`` the gold
    there; the curve starts at the base model (0 samples, normalised gain 0) and is linear between evaluations
    (trapezoids). Its area over ``[0, samples[-1]]`` divided by ``samples[-1]``: 1 means the ceiling from the
    first sample on, 0 no gain (or gains and losses that cancel), negative a net loss.
    """
    steps, values = np.asarray(samples, dtype=float), np.asarray(gold, dtype=float)
    if steps.ndim != 1 or steps.shape != values.shape or len(steps) < 1:
        raise ValueError(f"samples and gold must be 1-D of the same length >= 1, got {steps.shape} and {values.shape}")
    if steps[0] <= 0 or np.any(np.diff(steps) <= 0):
        raise ValueError(f"samples must be positive and increasing, got {steps.tolist()}")
    x = np.concatenate([[0.0], steps])  # (P + 1,)
    y = np.concatenate([[0.0], normalised_gold(values, base, ceiling)])  # (P + 1,)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return area / float(steps[-1])


def minimum_detectable_effect(std_of_differences: float, seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided paired t-test at level ``alpha`` detects with
    probability ``power`` over ``seeds`` seeds, when the per-seed differences have standard deviation
    ``std_of_differences``: ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the usual approximation of
    the noncentral t). NaN with fewer than 2 seeds or an unknown (NaN) standard deviation."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise ValueError(f"seeds must be an int >= 0, got {seeds!r}")
    if not (std_of_differences >= 0 or math.isnan(std_of_differences)):
        raise ValueError(f"std_of_differences must be >= 0 or NaN, got {std_of_differences}")
    if seeds < 2 or math.isnan(std_of_differences):
        return math.nan
    degrees = seeds - 1
    multiplier = stats.t.ppf(1 - alpha / 2, degrees) + stats.t.ppf(power, degrees)
    return float(multiplier * std_of_differences / math.sqrt(seeds))


def seeds_for_effect(
    std_of_differences: float, effect: float, alpha: float = 0.05, power: float = 0.8, max_seeds: int = 1000
) -> int | None:
    """The fewest seeds whose :func:`minimum_detectable_effect` is at most ``effect`` (None: not within
    ``max_seeds``): the number of seeds a target MDE needs at the measured spread."""
    if effect <= 0:
        raise ValueError(f"effect must be > 0, got {effect}")
    for seeds in range(2, max_seeds + 1):
        if minimum_detectable_effect(std_of_differences, seeds, alpha, power) <= effect:
            return seeds
    return None


def pooled_std_of_differences(differences: Sequence[Sequence[float]]) -> float:
    """The pooled standard deviation of several sets of paired differences (one set per agent pair, one value per
    seed): ``sqrt`` of the mean of their sample variances weighted by degrees of freedom; NaN if no set has two
    values."""
    degrees, total = 0, 0.0
    for values in differences:
        array = np.asarray(values, dtype=float)
        if array.ndim != 1:
            raise ValueError(f"each set of differences must be 1-D, got shape {array.shape}")
        if len(array) >= 2:
            degrees += len(array) - 1
            total += float(array.var(ddof=1)) * (len(array) - 1)
    return math.sqrt(total / degrees) if degrees else math.nan


__all__ = [
    "BOOTSTRAP_REPS",
    "BOOTSTRAP_SEED",
    "Interval",
    "PerformanceProfile",
    "iqm",
    "iqm_interval",
    "minimum_detectable_effect",
    "normalised_auc",
    "normalised_gold",
    "performance_profiles",
    "pooled_std_of_differences",
    "probability_of_improvement",
    "seeds_for_effect",
]

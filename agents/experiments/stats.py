"""Statistics over seeds and samples: a mean with its 95% t-interval, and paired differences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class MeanCI:
    """The mean over seeds and the half-width of its 95% t-interval (NaN with fewer than two seeds)."""

    mean: float
    half_width: float
    count: int

    def __str__(self) -> str:
        if not math.isfinite(self.mean):
            return "–"
        if not math.isfinite(self.half_width):
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.half_width:.4f}"


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> MeanCI:
    """Mean ± half-width of the two-sided t confidence interval; missing values are skipped."""
    present = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(present) == 0:
        return MeanCI(math.nan, math.nan, 0)
    if len(present) == 1:
        return MeanCI(float(present[0]), math.nan, 1)
    from scipy import stats  # imported here: scipy is only needed for a comparison's tables

    sem = present.std(ddof=1) / math.sqrt(len(present))
    return MeanCI(float(present.mean()), float(stats.t.ppf((1 + confidence) / 2, len(present) - 1) * sem), len(present))


def paired_difference(reference: dict[int, float | None], other: dict[int, float | None]) -> MeanCI:
    """Mean ± 95% CI over the seeds both have of ``other[seed] - reference[seed]`` (missing scores skipped)."""
    return mean_ci(
        [
            None if reference[seed] is None or other[seed] is None else other[seed] - reference[seed]
            for seed in sorted(reference.keys() & other.keys())
        ]
    )


__all__ = ["MeanCI", "mean_ci", "paired_difference"]

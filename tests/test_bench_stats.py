"""The bench's statistics on known inputs: rliable's IQM and its bootstrap CI, the probability of improvement,
performance profiles, and the hand-computed pure functions (normalised gold and AUC, minimum detectable effect)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("rliable")

from agents.experiments.bench_stats import (  # noqa: E402
    iqm,
    iqm_interval,
    minimum_detectable_effect,
    normalised_auc,
    normalised_gold,
    performance_profiles,
    pooled_std_of_differences,
    probability_of_improvement,
    seeds_for_effect,
)

REPS = 500  # bootstrap replications where no bound is checked by hand (the default 2000 is for leaderboards)

# 8 seeds of one task: the middle half (sorted) is 0.02, 0.03, 0.05, 0.06 -> IQM 0.04
TABLE = [0.10, 0.02, -0.30, 0.05, 0.03, 0.06, 0.00, 0.50]


def test_the_iqm_of_a_fixed_table_is_the_mean_of_its_middle_half():
    assert iqm(TABLE) == pytest.approx(0.04)
    # two tasks of 4 runs: the middle half of all 8 scores, 3.5 4.5 5.5 6.5 -> 5.0 (not the mean 5.125)
    assert iqm(np.array([[1.0, 4.5], [3.5, 6.5], [5.5, 9.0], [10.0, 1.0]])) == pytest.approx(5.0)


def test_the_iqm_interval_contains_the_iqm_is_reproducible_and_ignores_the_outliers():
    interval = iqm_interval(TABLE)
    assert interval.point == pytest.approx(0.04)
    assert -0.30 < interval.low < 0.04 < interval.high < 0.50  # the outliers never become a bound alone
    assert iqm_interval(TABLE) == interval  # seeded bootstrap
    constant = iqm_interval([0.1, 0.1, 0.1], reps=REPS)
    assert (constant.low, constant.point, constant.high) == pytest.approx((0.1, 0.1, 0.1))


def test_a_dominated_pair_has_probability_of_improvement_one_with_a_degenerate_interval():
    better, worse = [0.20, 0.25, 0.30, 0.22], [0.01, 0.05, -0.02, 0.03]
    interval = probability_of_improvement(better, worse, reps=200)
    assert (interval.point, interval.low, interval.high) == (1.0, 1.0, 1.0)
    assert probability_of_improvement(worse, better, reps=50).point == 0.0


def test_identical_agents_are_undecided_the_interval_contains_one_half():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    interval = probability_of_improvement(scores, scores, reps=200)
    assert interval.point == 0.5  # every run ties with itself: ties count 1/2 by symmetry
    assert interval.low < 0.5 < interval.high


def test_probability_of_improvement_of_a_hand_counted_pair():
    # x beats y in 3 of 4 pairs: (2 > 1), (2 < 3), (4 > 1), (4 > 3)
    assert probability_of_improvement([2.0, 4.0], [1.0, 3.0], reps=50).point == pytest.approx(0.75)


def test_performance_profiles_are_fractions_of_runs_above_each_threshold():
    profile = performance_profiles(
        {"a": np.array([[0.1], [0.5]]), "b": np.array([[0.2], [0.3]])}, np.array([0.0, 0.25, 0.6])
    )
    np.testing.assert_allclose(profile.fractions["a"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(profile.fractions["b"], [1.0, 0.5, 0.0])
    assert np.all(profile.low["a"] <= profile.fractions["a"]) and np.all(profile.fractions["a"] <= profile.high["a"])


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        iqm([0.1, math.nan])
    with pytest.raises(ValueError, match="shape"):
        iqm(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 1)))


def test_normalised_gold_is_zero_at_the_base_and_one_at_the_ceiling():
    np.testing.assert_allclose(normalised_gold([0.8, 0.9, 1.0, 0.7], 0.8, 1.0), [0.0, 0.5, 1.0, -0.5])
    with pytest.raises(ValueError, match="below the ceiling"):
        normalised_gold(0.9, 1.0, 1.0)


def test_the_normalised_auc_of_a_hand_drawn_curve():
    # base 0.8, ceiling 1.0: normalised gains 0.5 at 100 samples, 1.0 at 200; trapezoids from (0, 0):
    # 100 * (0 + 0.5) / 2 + 100 * (0.5 + 1) / 2 = 100, over 200 samples = 0.5
    assert normalised_auc([100, 200], [0.9, 1.0], 0.8, 1.0) == pytest.approx(0.5)
    assert normalised_auc([50, 100], [0.8, 0.8], 0.8, 1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="increasing"):
        normalised_auc([100, 100], [0.9, 1.0], 0.8, 1.0)
    with pytest.raises(ValueError, match="same length"):
        normalised_auc([100, 200], [0.9], 0.8, 1.0)


def test_the_minimum_detectable_effect_by_hand():
    # n = 5: t_{0.975, 4} = 2.776445, t_{0.80, 4} = 0.940965; (2.776445 + 0.940965) * 0.02 / sqrt(5) = 0.033250
    assert minimum_detectable_effect(0.02, 5) == pytest.approx(0.033250, abs=1e-6)
    # n = 10: t_{0.975, 9} = 2.262157, t_{0.80, 9} = 0.883404; 3.145561 * 0.02 / sqrt(10) = 0.019894
    assert minimum_detectable_effect(0.02, 10) == pytest.approx(0.019894, abs=1e-6)
    assert math.isnan(minimum_detectable_effect(0.02, 1))
    assert seeds_for_effect(0.02, 0.02) == 10  # 9 seeds: (2.306004 + 0.888890) * 0.02 / 3 = 0.021299 > 0.02
    with pytest.raises(ValueError, match="alpha"):
        minimum_detectable_effect(0.02, 5, alpha=1.5)


def test_pooled_std_of_paired_differences_by_hand():
    # variances (ddof 1): [0, 0.02] -> 0.0002 (1 dof); [0.01, 0.01, 0.04] -> 0.0003 (2 dof); pooled 0.0008 / 3
    assert pooled_std_of_differences([[0.0, 0.02], [0.01, 0.01, 0.04]]) == pytest.approx(math.sqrt(0.0008 / 3))
    assert math.isnan(pooled_std_of_differences([[0.1]]))

"""The race table of comparison mode (agents.experiments.comparison): threshold crossings and held-out bands, by
hand."""

from __future__ import annotations

import numpy as np
import pytest

from agents.experiments.comparison import crossings, generalisation_change, held_out_band, run_mean
from agents.training.evaluation import Scores
from agents.training.run_folder import Generalisation, RunResult


def result(base_gold: float, held_out: list[float], approx_kl: list[float], generalisation=None) -> RunResult:
    """A run evaluated every 2 epochs of 10 samples (epochs 2, 4, ...), 60 s per epoch."""
    history = []
    for epoch in range(1, 2 * len(held_out) + 1):
        record = {"epoch": epoch, "global_step": 10 * epoch, "elapsed_seconds": 60.0 * epoch}
        record["approx_kl"] = approx_kl[epoch - 1]
        if epoch % 2 == 0:
            record["eval_gold"] = held_out[epoch // 2 - 1]
        history.append(record)
    scores = Scores(reward=base_gold, gold=base_gold, proxy=None)
    return RunResult(
        label="x", agent="ddpo", model="m", reward="r", prompts="p", eval_prompts="p", num_eval_samples=4, seed=0,
        epochs=len(history), epochs_completed=len(history), interrupted=False, samples_seen=10 * len(history),
        train_samples_seen=10 * len(history), wall_seconds=1.0, base=scores, final=scores, config={}, command="",
        num_inference_steps=3, device="cpu", history=history, generalisation=generalisation,
    )  # fmt: skip


def test_a_threshold_is_crossed_when_the_seed_mean_gain_first_reaches_it():
    # gains per evaluation: seed A +0.02, +0.06, +0.12; seed B +0.00, +0.06, +0.08 -> means +0.01, +0.06, +0.10
    runs = [result(0.80, [0.82, 0.86, 0.92], [1.0] * 6), result(0.70, [0.70, 0.76, 0.78], [3.0] * 6)]
    five, ten = crossings(runs, "gold")
    assert (five.samples, five.minutes) == (40, 4.0)  # the second evaluation: epoch 4, 40 samples, 240 s
    assert (ten.samples, ten.minutes) == (60, 6.0)  # +0.10 exactly counts as reached
    assert str(five) == "40 (4.0 min)"


def test_a_threshold_never_reached_says_so():
    (five, ten) = crossings([result(0.8, [0.81, 0.84], [0.0] * 4)], "gold")
    assert five.samples is None and ten.samples is None and str(ten) == "not reached"


def test_the_held_out_band_starts_at_the_base_model_and_spans_the_seeds():
    band = held_out_band([result(0.80, [0.82, 0.86], [0.0] * 4), result(0.70, [0.70, 0.76], [0.0] * 4)], "gold")
    np.testing.assert_allclose(band.steps, [0, 20, 40])
    np.testing.assert_allclose(band.smoothed_mean, [0.75, 0.76, 0.81])
    half = 12.706204736 * 0.05  # t(0.975, 1 dof) x the standard error of two values 0.1 apart (0.05)
    np.testing.assert_allclose(band.high - band.smoothed_mean, [half, 0.06 * 12.706204736, half], rtol=1e-6)


def test_the_run_mean_of_approx_kl_and_the_generalisation_change():
    general = Generalisation("heldout", 4, Scores(0.9, 0.9, None), Scores(0.95, 0.93, None))
    runs = [result(0.8, [0.8], [1.0, 3.0], general), result(0.8, [0.8], [5.0, 7.0], general)]
    kl = run_mean(runs, "approx_kl")
    assert kl.mean == pytest.approx(4.0) and kl.count == 2  # seed means 2 and 6
    change = generalisation_change(runs, "gold")
    assert change.mean == pytest.approx(0.03) and change.half_width == pytest.approx(0.0)
    assert generalisation_change([result(0.8, [0.8], [0.0, 0.0])], "gold") is None

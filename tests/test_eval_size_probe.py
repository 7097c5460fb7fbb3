"""benchmarks/probes/eval_size.py: the split of a paired difference into training and evaluation noise, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import load_script

eval_size = load_script("benchmarks/probes/eval_size.py")


def test_decompose_by_hand():
    # two seeds, four samples each, a - b per sample: seed 0 (1, 0, 1, 0), seed 1 (0, 0, 0, 0)
    gold_a = np.array([[1.0, 0.6, 1.0, 0.6], [0.8, 0.8, 0.8, 0.8]])
    gold_b = np.array([[0.0, 0.6, 0.0, 0.6], [0.8, 0.8, 0.8, 0.8]])
    per_seed, sigma_squared = eval_size.decompose(gold_a, gold_b, 4)
    np.testing.assert_allclose(per_seed, [0.5, 0.0])
    # per-sample variance (ddof 1): seed 0 (4 x 0.25) / 3 = 1/3, seed 1 0; the mean over pairs 1/6
    assert sigma_squared == pytest.approx(1 / 6)
    per_seed, sigma_squared = eval_size.decompose(gold_a, gold_b, 2)  # the first two samples only
    np.testing.assert_allclose(per_seed, [0.5, 0.0])
    assert sigma_squared == pytest.approx(0.25)  # seed 0: (0.25 + 0.25) / 1 = 0.5; mean with 0


def test_decompose_refuses_mismatched_tables_and_sizes():
    with pytest.raises(ValueError, match="seeds, samples"):
        eval_size.decompose(np.zeros((2, 4)), np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="n must be"):
        eval_size.decompose(np.zeros((2, 4)), np.zeros((2, 4)), 5)

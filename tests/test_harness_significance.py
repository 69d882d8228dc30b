"""The rank test and the ratio interval behind `fab compare` (harness.significance), against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from testbed.harness import significance


def _brute_p_less(x: list[float], y: list[float]) -> float:
    """P(U <= U_observed) over every way to deal the pooled values into groups of len(x) and len(y)."""
    pooled = x + y
    observed = significance.u_statistic(x, y)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        xs = [pooled[i] for i in chosen]
        ys = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        hits += significance.u_statistic(xs, ys) <= observed
    return hits / total


def test_three_against_three_fully_apart_is_one_in_twenty():
    assert significance.p_less([1, 2, 3], [4, 5, 6]) == pytest.approx(0.05)
    assert significance.p_less([4, 5, 6], [1, 2, 3]) == 1.0
    assert significance.p_less([1, 2], [3, 4]) == pytest.approx(1 / 6)  # two a side can never reach 0.05


@pytest.mark.parametrize("seed", range(12))
def test_the_exact_p_value_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    x, y = list(rng.normal(0, 1, m)), list(rng.normal(0.5, 1, n))
    assert significance.p_less(x, y) == pytest.approx(_brute_p_less(x, y))


def test_u_counts_pairs_and_ties_count_half():
    assert significance.u_statistic([1, 5], [2, 3]) == 2
    assert significance.u_statistic([2], [2]) == 0.5


def test_large_samples_use_the_normal_approximation_sensibly():
    rng = np.random.default_rng(3)
    low, high = rng.normal(90, 5, 40), rng.normal(100, 5, 40)
    assert significance.p_less(low, high) < 1e-6
    assert significance.p_less(high, low) > 1 - 1e-6
    same = list(range(0, 80, 2)), list(range(1, 81, 2))  # interleaved: no evidence either way
    assert 0.3 < significance.p_less(*same) < 0.7


def test_no_values_no_p_value():
    assert significance.p_less([], [1.0]) is None


def test_the_ratio_interval_of_constants_is_exact_and_needs_two_values_a_side():
    iv = significance.ratio_of_medians_interval([60.0] * 3, [100.0] * 3, seed=1)
    assert iv.low == iv.high == pytest.approx(0.6)
    assert significance.ratio_of_medians_interval([1.0], [1.0, 2.0], seed=1) is None
    assert significance.ratio_of_medians_interval([1.0, 1.0], [0.0, 0.0], seed=1) is None


def test_the_ratio_interval_is_seeded_and_covers_the_true_ratio_mostly():
    rng = np.random.default_rng(5)
    a, b = rng.normal(80, 8, 10), rng.normal(100, 10, 10)
    assert (significance.ratio_of_medians_interval(a, b, seed=2)
            == significance.ratio_of_medians_interval(a, b, seed=2))
    hits = sum(significance.ratio_of_medians_interval(rng.normal(80, 8, 15), rng.normal(100, 10, 15), seed=t,
                                                      resamples=500).covers(0.8) for t in range(200))
    assert hits >= 0.85 * 200  # a 95 % interval; the percentile bootstrap undercovers a little at this size

"""Statistics over repeats (harness.stats) on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.harness import stats


def test_constant_data_has_no_spread_and_a_zero_width_interval():
    s = stats.summarize([5000.0] * 6, seed=1)
    assert (s.n, s.median, s.mean, s.cv) == (6, 5000.0, 5000.0, 0.0)
    assert s.interval is not None and s.interval.width == 0 and s.interval.low == 5000.0
    assert s.to_dict() == {"n": 6, "median": 5000.0, "mean": 5000.0, "cv": 0.0, "ci_low": 5000.0, "ci_high": 5000.0}


def test_median_mean_and_cv_of_a_small_sample():
    s = stats.summarize([1.0, 2.0, 3.0, 10.0], seed=1)
    assert s.median == 2.5 and s.mean == 4.0
    assert s.cv == pytest.approx(np.std([1, 2, 3, 10], ddof=1) / 4.0)
    assert s.interval.low >= 1.0 and s.interval.high <= 10.0 and s.interval.covers(2.5)


def test_no_values_no_summary_and_one_value_no_interval():
    assert stats.summarize([], seed=1) is None
    one = stats.summarize([7.0], seed=1)
    assert one.median == 7.0 and one.cv is None and one.interval is None
    assert stats.cv([0.0, 0.0]) is None  # a mean of 0 has no relative spread


def test_the_seed_makes_the_interval_reproducible():
    data = np.random.default_rng(3).normal(100, 10, 9)
    assert stats.median_interval(data, seed=5) == stats.median_interval(data, seed=5)
    assert stats.median_interval(data, seed=5) != stats.median_interval(data, seed=6)


def test_the_median_interval_covers_the_true_median_at_about_the_nominal_rate():
    # 300 normal samples of 25 (true median 100): a 95 % interval should miss about 15 times. The percentile
    # bootstrap of a median is a little conservative at this size; the bounds leave room for both and for
    # chance (a binomial 300 x 0.95 has a standard deviation of 3.8 hits).
    rng = np.random.default_rng(2026)
    trials = 300
    hits = sum(stats.median_interval(rng.normal(100.0, 15.0, 25), seed=t, resamples=1000).covers(100.0)
               for t in range(trials))
    assert 0.89 * trials <= hits <= 0.995 * trials


def test_the_ratio_of_two_constants_is_exact():
    iv = stats.ratio_interval([(300.0, 20.0)] * 5, seed=1)
    assert iv.low == iv.high == 15.0


def test_the_ratio_interval_resamples_pairs_and_contains_the_ratio_of_medians():
    rng = np.random.default_rng(11)
    base = rng.normal(20_000, 2_000, 12)
    case = 10 * base * rng.normal(1.0, 0.05, 12)  # ten times the base, 5 % noise of its own
    iv = stats.ratio_interval(list(zip(case, base, strict=True)), seed=4)
    assert iv.covers(float(np.median(case) / np.median(base)))
    assert 8.5 < iv.low < 10 < iv.high < 11.5


def test_ratio_interval_needs_two_pairs_and_a_positive_denominator():
    assert stats.ratio_interval([(1.0, 2.0)], seed=1) is None
    assert stats.ratio_interval([], seed=1) is None
    assert stats.ratio_interval([(1.0, 0.0), (2.0, 0.0)], seed=1) is None

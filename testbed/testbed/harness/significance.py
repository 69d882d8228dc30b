"""Is a difference between two runs' repeats real? An exact Mann–Whitney U test and a bootstrap interval of the
ratio of two independent medians: what `fab compare` (compare.py) decides a regression with.

Why these two, as asv and pyperf do: a few repeats of a TCG testbed are not normal, so a rank test (no
distribution assumed) says whether NEW's repeats sit apart from BASE's, and the bootstrap says how far the
ratio of medians could move. Exact, not the normal approximation, for small samples: with 3 repeats a side
the smallest one-sided p-value is 1/20 = 0.05 (every NEW repeat below every BASE repeat), and an
approximation would say otherwise. Pure: numbers in, numbers out (numpy only; scipy is not a dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from math import comb, erf, sqrt

import numpy as np

from testbed.harness.stats import CONFIDENCE, RESAMPLES, Interval

EXACT_MAX = 30  # exact distribution up to this many values a side; a normal approximation above


def u_statistic(x: Sequence[float], y: Sequence[float]) -> float:
    """Mann–Whitney U of x: the pairs (x_i, y_j) with x_i > y_j, a tie counting one half."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diff = xs[:, None] - ys[None, :]
    return float(np.sum(diff > 0) + 0.5 * np.sum(diff == 0))


@cache
def _counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the comb(m + n, m) orderings of m x's and n y's give U = 0, 1, ..., m * n (no ties)."""
    if m == 0 or n == 0:
        return (1,)
    # The largest value is an x (it beats all n y's: U - n for the rest) or a y (U unchanged for the rest).
    with_x, with_y = _counts(m - 1, n), _counts(m, n - 1)
    out = [0] * (m * n + 1)
    for u, k in enumerate(with_x):
        out[u + n] += k
    for u, k in enumerate(with_y):
        out[u] += k
    return tuple(out)


def p_less(x: Sequence[float], y: Sequence[float]) -> float | None:
    """One-sided p-value of "x tends to be smaller than y": P(U <= U_observed) under "same distribution".

    Exact (counting orderings, ties taken at their half-count) up to EXACT_MAX values a side, else the normal
    approximation with a continuity correction. None when a side has no values.
    """
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return None
    u = u_statistic(x, y)
    if m <= EXACT_MAX and n <= EXACT_MAX:
        counts = _counts(m, n)
        return min(1.0, sum(counts[: int(np.floor(u)) + 1]) / comb(m + n, m))
    mean, sd = m * n / 2, sqrt(m * n * (m + n + 1) / 12)
    z = (u + 0.5 - mean) / sd
    return min(1.0, 0.5 * (1 + erf(z / sqrt(2))))


def ratio_of_medians_interval(new: Sequence[float], base: Sequence[float], seed: int, resamples: int = RESAMPLES,
                              confidence: float = CONFIDENCE) -> Interval | None:
    """Percentile bootstrap interval of median(new) / median(base), each run's repeats resampled on their own.

    Two runs are independent (unlike the "× legacy" pairs of one run, stats.ratio_interval), so nothing is
    paired. None with fewer than two values on a side, or when a resampled base median is not positive.
    """
    a, b = np.asarray(new, dtype=float), np.asarray(base, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    rng = np.random.default_rng(seed)
    num = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    den = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    if np.any(den <= 0):
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(num / den, [tail, 100 - tail])
    return Interval(float(low), float(high), confidence)

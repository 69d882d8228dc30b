"""Statistics over a case's repeats: median, mean, CV and a bootstrap 95 % interval of the median, and an
interval for the ratio of two cases' medians (the "× legacy" figures).

Why a bootstrap: a handful of repeats of a noisy TCG testbed are not normal, and scipy is not a dependency;
the percentile bootstrap of the median needs only numpy and says how far the figure could move. The seed is
recorded in run.json, so a stored run's report shows the same intervals every time it is printed.
Pure: numbers in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A confidence interval [low, high] at `confidence`."""

    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def width(self) -> float:
        return self.high - self.low

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Summary:
    """A case's figure over its repeats; `interval` is None with fewer than two values (nothing to resample)."""

    n: int
    median: float
    mean: float
    cv: float | None  # sample standard deviation / mean; None when the mean is 0 or there is one value
    interval: Interval | None

    def to_dict(self) -> dict:
        return {"n": self.n, "median": self.median, "mean": self.mean, "cv": self.cv,
                "ci_low": self.interval.low if self.interval else None,
                "ci_high": self.interval.high if self.interval else None}


def _percentiles(samples: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(low), float(high), confidence)


def cv(values: Sequence[float]) -> float | None:
    """Coefficient of variation: sample standard deviation (n - 1) over the mean."""
    data = np.asarray(values, dtype=float)
    if data.size < 2 or data.mean() == 0:
        return None
    return float(data.std(ddof=1) / abs(data.mean()))


def median_interval(values: Sequence[float], seed: int, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE) -> Interval | None:
    """Percentile bootstrap interval of the median: resample the repeats with replacement `resamples` times."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    return _percentiles(np.median(data[picks], axis=1), confidence)


def summarize(values: Sequence[float], seed: int, resamples: int = RESAMPLES,
              confidence: float = CONFIDENCE) -> Summary | None:
    """Median, mean, CV and the median's interval of a case's values (None for no values)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    return Summary(n=int(data.size), median=float(np.median(data)), mean=float(data.mean()), cv=cv(data),
                   interval=median_interval(data, seed, resamples, confidence))


def ratio_interval(pairs: Sequence[tuple[float, float]], seed: int, resamples: int = RESAMPLES,
                   confidence: float = CONFIDENCE) -> Interval | None:
    """Interval of median(numerators) / median(denominators), resampling the pairs of repeats together.

    Pairs, because interleaved repeat k of two cases ran side by side in the same round: host drift that
    moved both moves the ratio less, and resampling them together keeps that. None with fewer than two
    pairs, or when a resampled denominator median is not positive.
    """
    data = np.asarray(pairs, dtype=float).reshape(-1, 2)
    if len(data) < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    num = np.median(data[:, 0][picks], axis=1)
    den = np.median(data[:, 1][picks], axis=1)
    if np.any(den <= 0):
        return None
    return _percentiles(num / den, confidence)

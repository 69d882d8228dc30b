"""Latency percentiles, a log histogram and mean/stddev over the measured intervals: the numbers a result reports."""

from __future__ import annotations

import math
import statistics

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def latency_summary(samples_ns) -> dict:
    """Percentiles (nearest rank), min, max and mean of per-transaction latencies, in microseconds."""
    data = sorted(samples_ns)
    n = len(data)
    if n == 0:
        return {name: None for name, _ in PERCENTILES} | {"max": None, "min": None, "mean": None, "samples": 0}
    out = {}
    for name, p in PERCENTILES:
        rank = max(1, math.ceil(p * n / 100.0 - 1e-9))  # nearest rank; the epsilon absorbs 99.9 * n rounding
        out[name] = round(data[rank - 1] / 1000.0, 3)
    out["max"] = round(data[-1] / 1000.0, 3)
    out["min"] = round(data[0] / 1000.0, 3)
    out["mean"] = round(sum(data) / n / 1000.0, 3)
    out["samples"] = n
    return out


BUCKETS_PER_DECADE = 20  # log buckets 12.2 % wide: a percentile read from them is within ~6 % (HDR-style)


def latency_histogram(samples_ns, per_decade: int = BUCKETS_PER_DECADE) -> dict:
    """Per-transaction latencies as a log histogram, so a CDF can be drawn and percentiles read without
    keeping every sample: bucket i (0-based) holds latencies in [first_us * r**i, first_us * r**(i+1)) µs
    with r = 10 ** (1 / per_decade); `counts` runs from the first to the last non-empty bucket."""
    counts: dict[int, int] = {}
    for ns in samples_ns:
        us = max(ns, 1) / 1000.0
        k = math.floor(math.log10(us) * per_decade + 1e-9)
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        return {"buckets_per_decade": per_decade, "first_us": None, "counts": []}
    lo, hi = min(counts), max(counts)
    return {"buckets_per_decade": per_decade, "first_us": round(10 ** (lo / per_decade), 6),
            "counts": [counts.get(k, 0) for k in range(lo, hi + 1)]}


def mean_stddev(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "stddev": None}
    return {
        "mean": round(statistics.fmean(vals), 3),
        "stddev": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
    }

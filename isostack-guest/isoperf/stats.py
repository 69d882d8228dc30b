"""Latency percentiles and mean/stddev over the repeats: the numbers a result reports."""

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


def mean_stddev(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "stddev": None}
    return {
        "mean": round(statistics.fmean(vals), 3),
        "stddev": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
    }

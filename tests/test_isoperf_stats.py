"""isoperf.stats: latency percentiles (nearest rank) and mean/stddev over measured intervals."""

from __future__ import annotations

import isoperf.stats


def test_latency_summary_nearest_rank_percentiles_in_microseconds():
    samples = [i * 1000 for i in range(1, 1001)]  # 1..1000 us, shuffled order must not matter
    s = isoperf.stats.latency_summary(reversed(samples))
    assert s == {"p50": 500.0, "p90": 900.0, "p99": 990.0, "p99.9": 999.0, "max": 1000.0, "min": 1.0,
                 "mean": 500.5, "samples": 1000}
    assert isoperf.stats.latency_summary([7000])["p99.9"] == 7.0
    assert isoperf.stats.latency_summary([])["samples"] == 0 and isoperf.stats.latency_summary([])["p50"] is None


def test_mean_stddev():
    assert isoperf.stats.mean_stddev([2.0, 4.0, 6.0]) == {"mean": 4.0, "stddev": 2.0}
    assert isoperf.stats.mean_stddev([5.0]) == {"mean": 5.0, "stddev": 0.0}


def test_latency_histogram_buckets_are_log_and_hold_every_sample():
    from isoperf.stats import latency_histogram

    samples = [1_000] * 5 + [10_000] * 3 + [12_000] + [1_000_000]  # 1 µs x5, 10 µs x3, 12 µs, 1 ms
    h = latency_histogram(samples)
    assert h["buckets_per_decade"] == 20 and h["first_us"] == 1.0
    assert sum(h["counts"]) == len(samples)
    assert len(h["counts"]) == 61  # 1 µs .. 1 ms: three decades of 20 buckets, both ends included
    assert h["counts"][0] == 5 and h["counts"][20] == 3 and h["counts"][21] == 1 and h["counts"][60] == 1
    # a bucket's bounds contain its samples: 12 µs lies in [10**(21/20), 10**(22/20))
    assert 10 ** (21 / 20) <= 12 < 10 ** (22 / 20)
    assert latency_histogram([]) == {"buckets_per_decade": 20, "first_us": None, "counts": []}

"""`fab compare`'s judgement (harness.compare) on synthetic runs with known differences."""

from __future__ import annotations

import numpy as np
import pytest
from compare_helpers import noisy, record, run, stream_run

from testbed.harness import compare


def _verdicts(result: compare.Comparison, metric: str = "messages_per_s") -> dict:
    return {compare.case_label(m.key): m.verdict for m in result.changes if m.metric.name == metric}


@pytest.mark.parametrize("repeats", [3, 5])
@pytest.mark.parametrize("seed", range(10))
def test_pure_noise_is_never_a_regression(seed, repeats):
    # Both runs from the same distribution (5 % CV, about what a KVM host gives): whatever the draw, no verdict
    # may say regression or improvement.
    rng = np.random.default_rng(seed)
    base = stream_run({"legacy": noisy(1e5, 0.05, repeats, rng), "iso": noisy(9e5, 0.05, repeats, rng)})
    new = stream_run({"legacy": noisy(1e5, 0.05, repeats, rng), "iso": noisy(9e5, 0.05, repeats, rng)})
    result = compare.compare(base, new)
    assert result.changes and not result.regressions and not result.improvements
    assert not result.regressed


def test_noise_as_wide_as_tcgs_is_rarely_called_anything():
    # 300 pairs of runs with 20 % CV and 3 repeats (a smoke-sized run on a TCG host): the rule needs every NEW
    # repeat beyond the threshold from every BASE repeat, so false calls stay well below alpha (0.05).
    rng = np.random.default_rng(2026)
    calls = 0
    for t in range(300):
        base = stream_run({"iso": noisy(1e5, 0.2, 3, rng)})
        new = stream_run({"iso": noisy(1e5, 0.2, 3, rng)}, seed=t)
        calls += any(m.verdict in (compare.REGRESSION, compare.IMPROVEMENT)
                     for m in compare.compare(base, new, compare.Settings(resamples=500)).changes)
    assert calls <= 0.04 * 300


@pytest.mark.parametrize("seed", range(10))
def test_a_40_percent_drop_in_every_repeat_of_a_smoke_sized_run_is_a_regression(seed):
    rng = np.random.default_rng(seed)
    base_values = noisy(1e5, 0.05, 3, rng)
    base = stream_run({"iso": base_values})
    new = stream_run({"iso": [0.6 * v for v in base_values]})
    result = compare.compare(base, new)
    verdicts = {m.metric.name: m.verdict for m in result.changes}
    # messages/s and both per-CPU figures fell by 40 % (the CPU stayed the same)
    assert verdicts == {"messages_per_s": compare.REGRESSION, "messages_per_cpu_s": compare.REGRESSION,
                        "messages_per_host_cpu_s": compare.REGRESSION}
    assert result.regressed
    change = result.changes[0]
    assert change.change == pytest.approx(0.6)
    assert change.interval.high < 0.9 and change.p_worse == pytest.approx(0.05)


def test_a_40_percent_drop_is_found_nearly_always_at_10_percent_noise():
    # Power with 3 repeats a side: BASE and NEW drawn independently, 10 % CV, NEW 40 % lower. The rule needs
    # the whole interval beyond the threshold, so a BASE whose own repeats spread by 1.5x can hide it
    # ("unsure"); that happens in a few draws of 200, not more.
    rng = np.random.default_rng(7)
    found = sum(compare.compare(stream_run({"iso": noisy(1e5, 0.1, 3, rng)}),
                                stream_run({"iso": noisy(0.6e5, 0.1, 3, rng)}, seed=t),
                                compare.Settings(resamples=500)).changes[0].verdict == compare.REGRESSION
                for t in range(200))
    assert found >= 0.9 * 200


@pytest.mark.parametrize("seed", range(10))
def test_a_5_percent_drop_under_a_10_percent_threshold_is_not_a_regression(seed):
    rng = np.random.default_rng(seed)
    base_values = noisy(1e5, 0.01, 10, rng)
    base = stream_run({"iso": base_values})
    new = stream_run({"iso": [0.95 * v for v in base_values]})
    result = compare.compare(base, new)
    assert _verdicts(result) == {"stream-64 size=64 conns=1 iso": compare.UNCHANGED}
    assert not result.regressed
    # the same drop is one under a 2 % threshold: significant (ten repeats a side) and beyond it
    tight = compare.compare(base, new, compare.Settings(threshold=0.02))
    assert _verdicts(tight) == {"stream-64 size=64 conns=1 iso": compare.REGRESSION}


def test_a_rise_is_an_improvement_not_a_regression():
    base = stream_run({"iso": [1e5, 1.02e5, 0.98e5]})
    new = stream_run({"iso": [1.5e5, 1.52e5, 1.49e5]})
    result = compare.compare(base, new)
    assert _verdicts(result) == {"stream-64 size=64 conns=1 iso": compare.IMPROVEMENT}
    assert result.improvements and not result.regressed


def test_latency_is_worse_when_it_rises():
    def rr(p50: float, p99: float, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return run([record("rr-64", "iso", i, 5000 * f, latency=(p50 * f, p99 * f))
                    for i, f in enumerate(rng.normal(1, 0.02, 3))])

    result = compare.compare(rr(200, 400, 1), rr(100, 800, 2))
    verdicts = {m.metric.name: m.verdict for m in result.changes}
    assert verdicts["latency_p50_us"] == compare.IMPROVEMENT  # halved
    assert verdicts["latency_p99_us"] == compare.REGRESSION  # doubled
    assert verdicts["messages_per_s"] == compare.UNCHANGED
    assert result.regressed


def test_a_large_drop_beyond_a_wider_threshold_is_not_called():
    base = stream_run({"iso": [1e5, 1.02e5, 0.98e5]})
    new = stream_run({"iso": [0.6e5, 0.61e5, 0.59e5]})
    assert _verdicts(compare.compare(base, new, compare.Settings(threshold=0.5))) == {
        "stream-64 size=64 conns=1 iso": compare.UNCHANGED}


def test_too_few_repeats_get_no_verdict_whatever_the_drop():
    base = stream_run({"iso": [1e5, 1.01e5]})
    new = stream_run({"iso": [0.5e5, 0.51e5]})
    result = compare.compare(base, new)
    assert _verdicts(result) == {"stream-64 size=64 conns=1 iso": compare.NOT_ENOUGH}
    assert result.changes[0].change == pytest.approx(0.5, rel=0.01)  # the change is still shown
    assert not result.regressed
    # with --min-repeats 2 the same runs can be judged (p = 1/6 is not significant: unsure, not a guess)
    judged = compare.compare(base, new, compare.Settings(min_repeats=2))
    assert _verdicts(judged) == {"stream-64 size=64 conns=1 iso": compare.UNSURE}


def test_a_big_but_noisy_change_is_unsure():
    base = stream_run({"iso": [1e5, 0.5e5, 1.5e5]})
    new = stream_run({"iso": [0.7e5, 0.4e5, 1.2e5]})
    assert _verdicts(compare.compare(base, new)) == {"stream-64 size=64 conns=1 iso": compare.UNSURE}


def test_unmatched_cases_are_listed_not_compared():
    base = run([record("stream-64", "iso", i, 1e5) for i in range(3)]
               + [record("stream-64", "legacy", i, 1e4) for i in range(3)])
    new = run([record("stream-64", "iso", i, 1e5) for i in range(3)]
              + [record("stream-64", "iso", i, 2e5, conns=16) for i in range(3)])
    result = compare.compare(base, new)
    assert [compare.case_label(c.key) for c in result.only_base] == ["stream-64 size=64 conns=1 legacy"]
    assert [compare.case_label(c.key) for c in result.only_new] == ["stream-64 size=64 conns=16 iso"]
    assert set(_verdicts(result)) == {"stream-64 size=64 conns=1 iso"}
    assert not result.regressed


def test_runs_without_a_common_case_compare_to_nothing():
    result = compare.compare(stream_run({"legacy": [1e4] * 3}), stream_run({"iso": [1e5] * 3}))
    assert result.changes == [] and len(result.only_base) == len(result.only_new) == 1
    assert not result.regressed


def test_failed_repeats_are_left_out_and_counted():
    base = stream_run({"iso": [1e5, 1.01e5, 0.99e5]})
    new = stream_run({"iso": [0.6e5, None, 0.61e5, 0.59e5]})
    result = compare.compare(base, new)
    (case,) = result.cases
    assert (case.base_ok, case.base_failed, case.new_ok, case.new_failed) == (3, 0, 3, 1)
    assert _verdicts(result) == {"stream-64 size=64 conns=1 iso": compare.REGRESSION}
    # one fewer success and there is not enough to judge
    fewer = compare.compare(base, stream_run({"iso": [0.6e5, None, 0.61e5, None]}))
    assert _verdicts(fewer) == {"stream-64 size=64 conns=1 iso": compare.NOT_ENOUGH}


def test_a_case_that_failed_every_repeat_in_new_counts_as_a_regression():
    result = compare.compare(stream_run({"iso": [1e5] * 3}), stream_run({"iso": [None] * 3}))
    assert [c.verdict for c in result.cases] == [compare.FAILED_IN_NEW]
    assert result.changes == [] and result.regressed
    back = compare.compare(stream_run({"iso": [None] * 3}), stream_run({"iso": [1e5] * 3}))
    assert [c.verdict for c in back.cases] == [compare.FAILED_IN_BASE] and not back.regressed


def test_runs_measured_differently_are_warned_about():
    base = stream_run({"iso": [1e5] * 3}, accel="kvm")
    new = run([record("stream-64", "iso", i, 1e5, duration=10) for i in range(3)], accel="tcg", complete=False,
              run_id="20261202T000000Z")
    warnings = "\n".join(compare.compare(base, new).warnings)
    assert "accel differs: BASE kvm, NEW tcg" in warnings
    assert "NEW (20261202T000000Z) is incomplete" in warnings
    assert "stream-64 size=64 conns=1 iso: duration differs: BASE [3.0], NEW [10]" in warnings


def test_a_cases_key_with_more_fields_still_labels_and_serialises():
    assert compare.case_label(("rr", 64, 1, "iso", "spread")) == "rr size=64 conns=1 iso spread"
    assert compare.key_dict(("rr", 64, 1, "iso", "spread"))["extra"] == ["spread"]


def test_the_result_serialises_with_every_verdict_and_value():
    result = compare.compare(stream_run({"iso": [1e5, 1.01e5, 0.99e5]}), stream_run({"iso": [0.6e5] * 3}))
    doc = result.to_dict()
    assert doc["regressed"] is True and doc["regressions"] == 3
    first = doc["changes"][0]
    assert first["case"] == {"test_name": "stream-64", "size": 64, "connections": 1, "stack": "iso"}
    assert first["base"] == [1e5, 1.01e5, 0.99e5] and first["verdict"] == "regression"


@pytest.mark.parametrize("kw", [{"threshold": 0}, {"threshold": 1.5}, {"alpha": 0}, {"min_repeats": 1}])
def test_settings_out_of_range_are_refused(kw):
    with pytest.raises(ValueError):
        compare.Settings(**kw)


def _loaded(run_dict: dict, load: float) -> dict:
    for c in run_dict["cases"]:
        c["host_load"] = {"before": {"1m": load}, "after": {"1m": load + 0.4}}
    return run_dict


def test_a_drop_measured_at_another_host_load_is_not_judged_except_per_host_cpu():
    """Two runs of one commit at load averages 40 and 20 (2 CPUs, TCG) differed 2-30x in msgs/s: a change of a
    figure that follows the host's load is "host load differs", not a regression; msgs/host-CPU-s (the CPU the
    guest actually got) keeps its verdict, and the runs' comparison warns."""
    base_values = [1e5, 1.02e5, 0.98e5]
    base = _loaded(stream_run({"iso": base_values}), 2.0)
    new = _loaded(stream_run({"iso": [0.6 * v for v in base_values]}), 20.0)
    result = compare.compare(base, new)
    verdicts = {m.metric.name: m.verdict for m in result.changes}
    assert verdicts == {"messages_per_s": compare.LOAD_DIFFERS, "messages_per_cpu_s": compare.LOAD_DIFFERS,
                        "messages_per_host_cpu_s": compare.REGRESSION}
    assert result.regressed  # by the host-CPU figure alone
    assert any("load average differed" in w and "1 case(s)" in w for w in result.warnings)
    same = compare.compare(_loaded(stream_run({"iso": base_values}), 20.0),
                           _loaded(stream_run({"iso": [0.6 * v for v in base_values]}), 20.6))
    assert {m.verdict for m in same.changes} == {compare.REGRESSION}  # within 0.5 per CPU: judged as before
    assert not any("load average" in w for w in same.warnings)


def test_a_latency_rise_at_another_host_load_is_not_judged():
    base = _loaded(run([record("rr-64", "iso", i, 1000.0, latency=(100.0, 200.0)) for i in range(3)]), 1.0)
    new = _loaded(run([record("rr-64", "iso", i, 1000.0, latency=(300.0, 900.0)) for i in range(3)]), 9.0)
    verdicts = {m.metric.name: m.verdict for m in compare.compare(base, new).changes}
    assert verdicts["latency_p50_us"] == verdicts["latency_p99_us"] == compare.LOAD_DIFFERS

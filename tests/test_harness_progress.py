"""What counts as a bad case for the exit status of a run (progress.run_playbook)."""

from __future__ import annotations

import pytest
from harness_helpers import (
    FakeStats,
    counters,
    free_port,
    local_runner,
    stream_playbook,
)

from testbed.harness import results
from testbed.harness.benchmark import execute
from testbed.harness.playbook import parse_playbook


def test_runner_flags_data_the_device_model_did_not_carry(tmp_path):
    # counters unchanged: the bytes went over loopback, not through the switch
    stats = FakeStats([counters(5, 5), counters(5, 5)])
    runner = local_runner(tmp_path, stats)
    playbook = parse_playbook(stream_playbook(free_port()).replace("[256, 1448]", "1448"), "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    case = results.load_run(run_json)["cases"][0]
    assert case["status"] == "ok"
    assert case["device_model"]["crossed"] is False
    assert bad == 1


class _RecordingRunner:
    """Stands in for runner.Runner: answers every case with an ok record and remembers the order."""

    def __init__(self):
        self.ran = []

    def run_case(self, case):
        self.ran.append(case)
        return {"status": "ok", "error": None, "device_model": {"crossed": True}, "isoperf": {"throughput_bps": 1e9},
                "test_name": case.spec.name, "size": case.size, "repeat": case.repeat}


def test_cases_run_in_the_given_order_apart_with_the_load_average_around_each(tmp_path):
    from rich.console import Console

    from testbed.harness import order
    from testbed.harness.progress import run_playbook

    playbook = parse_playbook(stream_playbook(5701).replace("    port:", "    repeats: 2\n    port:"), "p.yaml")
    cases = order.arrange(playbook.cases(), "interleaved")
    runner, pauses = _RecordingRunner(), []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = results.RunStore(run_dir, {})
    out = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    bad = run_playbook(runner, "p", cases, store, out, interval_s=1.5, sleep=pauses.append)
    assert bad == 0
    assert [(c.size, c.repeat) for c in runner.ran] == [(256, 0), (1448, 0), (256, 1), (1448, 1)]
    assert pauses == [1.5, 1.5, 1.5]  # between cases, not before the first
    for record in store.run["cases"]:
        assert set(record["host_load"]) == {"before", "after"}
        assert record["host_load"]["before"] is None or "1m" in record["host_load"]["before"]


def test_the_eta_counts_the_cases_nominal_seconds_then_the_overhead_measured():
    from testbed.harness.progress import Eta, clock_text

    text = stream_playbook(5701).replace("    port:", "    repeats: 2\n    intervals: 3\n    port:")
    cases = parse_playbook(text, "p.yaml").cases()  # 4 cases of warm-up 0.1 s + 3 x 0.3 s = 1.0 s each
    eta = Eta(cases, interval_s=2.0)
    assert eta.left_s(0) == pytest.approx(4 * 1.0 + 3 * 2.0)  # before any case: no overhead known
    eta.done(cases[0], 11.0)  # that case took 10 s more than it measures
    eta.done(cases[1], 5.0)
    assert eta.left_s(2) == pytest.approx(2 * (1.0 + 7.0) + 2.0)  # mean overhead 7 s, one pause left
    assert eta.left_s(4) == 0
    assert [clock_text(s) for s in (9.4, 247, 3909, -1)] == ["0:09", "4:07", "1:05:09", "0:00"]


def test_the_progress_line_says_how_many_cases_are_left_and_when_the_run_ends(tmp_path):
    from rich.console import Console

    from testbed.harness.progress import run_playbook

    playbook = parse_playbook(stream_playbook(5701).replace("    port:", "    repeats: 2\n    port:"), "p.yaml")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ticks = iter(range(0, 1000, 10))  # every case takes 10 s on this clock
    out = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    run_playbook(_RecordingRunner(), "p", playbook.cases()[:3], results.RunStore(run_dir, {}), out, done=1,
                 clock=lambda: next(ticks))
    text = (tmp_path / "console.txt").read_text()
    assert "4/4, 0 left, ETA 0:00" in text  # a resumed run counts the case done before

"""What counts as a bad case for the exit status of a run (progress.run_playbook)."""

from __future__ import annotations

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

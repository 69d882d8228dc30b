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

"""Device-model counter deltas on canned `vhea stats --json` output (and one real `vhea serve`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testbed.harness import dmstats
from testbed.harness.dmstats import PortDelta, StatsError

FIXTURES = Path(__file__).parent / "fixtures" / "harness"


def _load(name: str) -> dict:
    return dmstats.parse_stats((FIXTURES / name).read_text())


def test_delta_per_port_on_canned_output():
    delta = dmstats.stats_delta(_load("vhea-stats-before.json"), _load("vhea-stats-after.json"))
    assert delta["a"] == PortDelta(
        from_guest_frames=8120,
        from_guest_bytes=12274160,
        to_guest_frames=4100,
        to_guest_bytes=276000,
        drops={"tx_oversize": 1},
    )
    assert delta["b"] == PortDelta(
        from_guest_frames=4100,
        from_guest_bytes=276000,
        to_guest_frames=8119,
        to_guest_bytes=12272646,
        drops={"rx_no_buffer": 1},
    )


def test_crossed_needs_client_port_bytes_at_least_the_payload():
    delta = dmstats.stats_delta(_load("vhea-stats-before.json"), _load("vhea-stats-after.json"))
    assert dmstats.crossed_device_model(delta, "a", 12_000_000) is True
    assert dmstats.crossed_device_model(delta, "a", 12_274_161) is False
    assert dmstats.crossed_device_model(delta, "b", 12_000_000) is False
    assert dmstats.crossed_device_model(delta, "z", 1) is False
    assert dmstats.crossed_device_model(delta, "a", 0) is False


def test_counter_going_down_means_a_restart():
    with pytest.raises(StatsError, match="counter from_guest_frames went down .*restarted"):
        dmstats.stats_delta(_load("vhea-stats-after.json"), _load("vhea-stats-before.json"))


def test_port_disappearing_is_an_error():
    before = _load("vhea-stats-before.json")
    after = {"a": before["a"]}
    with pytest.raises(StatsError, match="port 'b' disappeared"):
        dmstats.stats_delta(before, after)


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "did not print JSON"),
        ("[]", "no 'ports' mapping"),
        ('{"ports": {"a": 1}}', "port 'a' is not a mapping"),
        ('{"ports": {"a": {"from_guest_frames": 1}}}', "no integer 'from_guest_bytes'"),
        (
            '{"ports": {"a": {"from_guest_frames": true, "from_guest_bytes": 1, "to_guest_frames": 1, '
            '"to_guest_bytes": 1}}}',
            "no integer 'from_guest_frames'",
        ),
        (
            '{"ports": {"a": {"from_guest_frames": 1, "from_guest_bytes": 1, "to_guest_frames": 1, '
            '"to_guest_bytes": 1, "drops": {"x": "y"}}}}',
            "malformed 'drops'",
        ),
    ],
)
def test_parse_rejects_malformed_output(text, message):
    with pytest.raises(StatsError, match=message):
        dmstats.parse_stats(text)


def test_read_stats_without_a_device_model_is_a_stats_error(tmp_path):
    with pytest.raises(StatsError, match="vhea stats exited"):
        dmstats.read_stats(str(tmp_path))


def test_read_stats_from_a_real_vhea_serve(tmp_path):
    """The contract against the real device model: idle ports, zero deltas."""
    cmd = dmstats.vhea_command() + ["serve", "--socket-dir", str(tmp_path), "--ports", "a,b"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                before = dmstats.read_stats(str(tmp_path))
                break
            except StatsError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip("vhea serve did not come up here")
                time.sleep(0.2)
        after = dmstats.read_stats(str(tmp_path))
        datapath = dmstats.read_datapath(str(tmp_path))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert set(before) == {"a", "b"}
    assert dmstats.stats_delta(before, after)["a"] == PortDelta(0, 0, 0, 0, {})
    json.dumps(before)  # stays JSON-serialisable for run.json
    assert datapath in ("native", "python")  # what run.json records as the device model's datapath


def test_datapath_from_the_stats_json():
    assert dmstats.parse_datapath('{"datapath": "native", "ports": {}}') == "native"
    assert dmstats.parse_datapath('{"ports": {}}') == "python"  # vhea before the field: python only
    assert dmstats.parse_datapath("not json") is None
    assert dmstats.parse_datapath("[1]") is None


def test_no_device_model_no_datapath(tmp_path):
    assert dmstats.read_datapath(str(tmp_path)) is None

"""One case's record and the order of what runs on its guests (local or scripted guests, no VMs)."""

from __future__ import annotations

import socket

from harness_helpers import (
    ISO_PB,
    ISO_RESULT,
    TcpCountingShell,
    command_kinds,
    free_port,
    instances_runner,
    local_runner,
    local_topology,
    stream_playbook,
)
from rich.console import Console

from testbed.harness import dmstats, tcpstats
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.playbook import parse_playbook
from testbed.harness.runner import Runner


def test_runner_reports_a_server_that_cannot_listen(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        runner = local_runner(tmp_path, None)
        playbook = parse_playbook(stream_playbook(busy.getsockname()[1]), "local.yaml")
        case = runner.run_case(playbook.cases()[0])
    finally:
        busy.close()
    assert case["status"] == "failed"
    assert "isoperf server exited" in case["error"]
    assert "cannot listen" in case["error"]


def test_runner_records_missing_device_model_counters(tmp_path):
    runner = local_runner(tmp_path, None)
    playbook = parse_playbook(stream_playbook(free_port()).replace("[256, 1448]", "512"), "local.yaml")
    case = runner.run_case(playbook.cases()[0])
    assert case["status"] == "ok", case["error"]
    assert case["device_model"]["crossed"] is None
    assert case["device_model"]["error"] == "counters unavailable: no device-model counters reader"


def test_runner_records_why_the_counters_are_unavailable(tmp_path):
    def broken() -> dict:
        raise dmstats.StatsError("vhea stats exited 1: ImportError")

    runner = local_runner(tmp_path, broken)
    playbook = parse_playbook(stream_playbook(free_port()).replace("[256, 1448]", "512"), "local.yaml")
    case = runner.run_case(playbook.cases()[0])
    assert case["status"] == "ok", case["error"]
    assert case["device_model"]["crossed"] is None
    assert case["device_model"]["error"] == "counters unavailable: vhea stats exited 1: ImportError"
    assert "device-model counters unavailable" in (tmp_path / "console.txt").read_text()


def test_case_records_both_guests_tcp_counters_around_the_client(tmp_path):
    client = TcpCountingShell("iso-a", ISO_RESULT)
    server = TcpCountingShell("iso-b", ISO_RESULT, readable=False)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    runner = Runner(local_topology(), {"iso-a": client, "iso-b": server}, GuestLayout(), None, console)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert record["tcp"]["client"] == {"out_segs": 4000, "retrans_segs": 40, "rto_timeouts": 1, "spurious_rtos": 0,
                                       "fast_retrans": 30, "retrans_pct": 1.0}
    assert record["tcp"]["server"] == {"error": f"{tcpstats.COMMAND} exited 1"}  # recorded, not fatal
    i = client.commands.index(tcpstats.COMMAND)
    assert "-m isoperf client" in client.commands[i + 1] and client.commands[i + 2] == tcpstats.COMMAND


def test_legacy_case_places_both_guests_the_legacy_way_before_the_client(tmp_path):
    runner, client, server = instances_runner(tmp_path)
    text = ISO_PB.replace("    stack: iso\n", "    stack: legacy\n")
    record = runner.run_case(parse_playbook(text).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert command_kinds(client.commands) == ["legacy placement", "snapshot", "client", "snapshot"]
    assert command_kinds(server.commands) == ["legacy placement", "snapshot", "snapshot"]
    assert {g: p["mode"] for g, p in record["placement"].items()} == {"iso-a": "legacy", "iso-b": "legacy"}
    assert "isostackd" not in record and record["instances"] == 1 and record["so_busy_poll_us"] is None
    assert record["placement"]["iso-a"]["interrupts"]["virtio0-input.0"] == [0, 100, 0]

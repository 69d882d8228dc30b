"""One case's record and the order of what runs on its guests (local or scripted guests, no VMs)."""

from __future__ import annotations

import socket

from harness_helpers import (
    ISO_PB,
    ISO_RESULT,
    ScriptedShell,
    TcpCountingShell,
    command_kinds,
    free_port,
    instances_runner,
    local_runner,
    local_topology,
    stream_playbook,
)
from proc_helpers import FakeClock, FakeHost
from rich.console import Console

from testbed.harness import dmstats, hostcpu_sample, remote, tcpstats
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


class BurningShell(ScriptedShell):
    """A client guest whose isoperf client run burns host CPU on the fake host's vCPU 1 thread of iso-a."""

    def __init__(self, name: str, result: dict, host: FakeHost):
        super().__init__(name, result)
        self.host = host

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        if "-m isoperf client" in command:
            self.host.burn(1000, 1004, 150, 50)  # 2 s on vCPU 1
            self.host.burn(1000, 1003, 40)       # 0.4 s on vCPU 0
            self.host.burn(FakeHost.VHEA_PID, FakeHost.VHEA_PID, 80)
        return super().run(command, timeout_s)


def test_case_records_host_cpu_of_the_guests_vcpu_threads_around_the_client(tmp_path):
    host = FakeHost(tmp_path)
    result = dict(ISO_RESULT, cpu={"client": {"all": 75.0, "cpu0": 50.0, "cpu1": 100.0}, "server": {}})
    client = BurningShell("iso-a", result, host)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    runner = Runner(local_topology(), {"iso-a": client, "iso-b": ScriptedShell("iso-b", result)}, GuestLayout(),
                    None, console)
    runner.cases.hostcpu = hostcpu_sample.HostCpuSampler(host.uri, FakeHost.VHEA_PID, proc_root=host.proc,
                                                         ticks_per_s=100, clock=FakeClock(5.0, 9.0))
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    cpu = record["host_cpu"]
    assert cpu["interval_s"] == 4.0 and cpu["client"] == "iso-a"
    a = cpu["guests"]["iso-a"]
    assert [(v["vcpu"], v["seconds"], v["pct"], v["affinity"], v["guest_busy_pct"]) for v in a["vcpus"]] == [
        (0, 0.4, 10.0, [0], 50.0), (1, 2.0, 50.0, [1], 100.0)]
    assert cpu["guests"]["iso-b"]["role"] == "server" and cpu["guests"]["iso-b"]["vcpu_seconds"] == 0.0
    assert cpu["vhea"]["seconds"] == 0.8 and cpu["peer"] is None
    # 100 msgs/s on 0.6 host cores; the guest saw 1.5 of its 2 vCPUs busy
    assert cpu["client_messages_per_host_cpu_s"] == 166.7 and cpu["client_messages_per_guest_cpu_s"] == 66.7


def test_case_without_readable_host_cpu_records_why_and_succeeds(tmp_path):
    runner = local_runner(tmp_path, None)
    assert (runner.cases.hostcpu.uri, runner.cases.hostcpu.vhea_pid) == (runner.topology.uri, 4242)  # by default
    runner.topology.uri = "qemu+ssh://lab2/system"
    runner.cases.hostcpu = hostcpu_sample.HostCpuSampler.for_topology(runner.topology)
    playbook = parse_playbook(stream_playbook(free_port()).replace("[256, 1448]", "512"), "local.yaml")
    case = runner.run_case(playbook.cases()[0])
    assert case["status"] == "ok", case["error"]
    for guest in ("iso-a", "iso-b"):
        assert case["host_cpu"]["guests"][guest]["vcpus"] is None
        assert "another host" in case["host_cpu"]["guests"][guest]["error"]
    assert case["host_cpu"]["client_messages_per_host_cpu_s"] is None


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

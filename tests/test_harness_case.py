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


# ------------------------------------------------------------ placement: the application vs the NIC's interrupts


class PlacingShell(ScriptedShell):
    """A 2-vCPU guest with one queue pair that obeys the legacy placement: its queue IRQs sit where the last
    `--irq-cpus` put them (both vCPUs when spread) and take 100 interrupts there during the client's run."""

    def __init__(self, name: str, pin_fails: bool = False):
        super().__init__(name, ISO_RESULT)
        self.affinity, self.snapshots, self.pin_fails = "0", 0, pin_fails

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        if "isostack.placement --legacy" in command:
            self.commands.append(command)
            self.affinity = command.split("--irq-cpus ")[1].split()[0] if "--irq-cpus" in command else "0-1"
            return remote.CommandResult(0, "", "")
        if "/proc/interrupts" in command:
            self.snapshots += 1
            n = 100 if self.snapshots % 2 == 0 else 0
            counts = ",".join(str(n if str(cpu) in self.affinity.replace("0-1", "0,1") else 0) for cpu in (0, 1))
            return remote.CommandResult(0, f"irq virtio0-input.0 29 {self.affinity} {counts}\n", "")
        if command.startswith("taskset -a -p") and self.pin_fails:
            self.commands.append(command)
            return remote.CommandResult(1, "", "taskset: failed to set pid 100's affinity: Invalid argument")
        return super().run(command, timeout_s)


def placing_runner(tmp_path, pin_fails: bool = False) -> tuple[Runner, PlacingShell, PlacingShell]:
    client, server = PlacingShell("iso-a"), PlacingShell("iso-b", pin_fails)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    return Runner(local_topology(), {"iso-a": client, "iso-b": server}, GuestLayout(), None, console), client, server


LEGACY_PB = ISO_PB.replace("    stack: iso\n", "    stack: legacy\n")


def _entry(record: dict, guest: str) -> dict:
    keys = ("placement_mode", "app_cpus", "irq_cpus", "irq_cpus_applied", "irq_cpus_measured", "irqs_as_intended")
    return {k: record["placement"][guest][k] for k in keys}


def test_legacy_apart_puts_the_interrupts_on_the_last_vcpu_and_both_applications_on_vcpu_0(tmp_path):
    runner, client, server = placing_runner(tmp_path)
    record = runner.run_case(parse_playbook(LEGACY_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert record["placement_mode"] == "apart" and record["placement_axis"] is False
    assert record["commands"]["placement_client"].endswith(" --legacy --irq-cpus 1 --interfaces eth0")
    assert record["commands"]["placement_server"].endswith(" --legacy --irq-cpus 1 --interfaces eth0")
    assert record["commands"]["client"].startswith("taskset -c 0 env PYTHONPATH=/opt python3 -m isoperf client ")
    assert record["commands"]["pin_server"] == "taskset -a -p -c 0 100"
    for guest in ("iso-a", "iso-b"):
        assert _entry(record, guest) == {"placement_mode": "apart", "app_cpus": [0], "irq_cpus": [1],
                                         "irq_cpus_applied": [1], "irq_cpus_measured": [1], "irqs_as_intended": True}
    # the server is pinned once it listens, before the client guest is placed and the client runs
    order = [c for c in server.commands if "taskset" in c or "placement" in c]
    assert order == [record["commands"]["placement_server"], "taskset -a -p -c 0 100"]
    assert client.commands.index(record["commands"]["client"]) > client.commands.index(
        record["commands"]["placement_client"])


def test_legacy_irq_puts_the_applications_on_the_interrupts_vcpu(tmp_path):
    runner, _client, _server = placing_runner(tmp_path)
    record = runner.run_case(parse_playbook(LEGACY_PB + "    placement: irq\n").cases()[0])
    assert record["status"] == "ok", record["error"]
    assert record["commands"]["client"].startswith("taskset -c 1 env ")
    assert record["commands"]["pin_server"] == "taskset -a -p -c 1 100"
    assert _entry(record, "iso-a")["app_cpus"] == [1] and _entry(record, "iso-a")["irqs_as_intended"] is True


def test_legacy_spread_is_the_os_default_pinned_nowhere(tmp_path):
    runner, _client, _server = placing_runner(tmp_path)
    record = runner.run_case(parse_playbook(LEGACY_PB + "    placement: spread\n").cases()[0])
    assert record["status"] == "ok", record["error"]
    assert record["commands"]["placement_client"].endswith(" --legacy --interfaces eth0")
    assert record["commands"]["client"].startswith("PYTHONPATH=/opt python3 -m isoperf client ")
    assert "pin_server" not in record["commands"]
    assert _entry(record, "iso-a") == {"placement_mode": "spread", "app_cpus": None, "irq_cpus": None,
                                       "irq_cpus_applied": [0, 1], "irq_cpus_measured": [0, 1],
                                       "irqs_as_intended": None}


def test_iso_irq_puts_the_client_on_isostackds_vcpu_and_the_server_guest_gets_the_legacy_irq_layout(tmp_path):
    runner, _client, server = placing_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB + "    placement: [apart, irq]\n").cases()[1])
    assert record["status"] == "ok", record["error"]
    assert record["placement_mode"] == "irq" and record["placement_axis"] is True
    assert " --cpu 1 " in record["commands"]["isostackd"]
    assert record["commands"]["client"].startswith("taskset -c 1 env ISOSTACK_SOCKET=")
    assert {k: record["placement"]["iso-a"][k] for k in ("mode", "app_cpus", "irq_cpus")} == {
        "mode": "isostack", "app_cpus": [1], "irq_cpus": [1]}
    assert record["commands"]["pin_server"] == "taskset -a -p -c 1 100"
    assert _entry(record, "iso-b")["irqs_as_intended"] is True


def test_a_server_that_cannot_be_pinned_fails_the_case_and_is_stopped(tmp_path):
    runner, client, server = placing_runner(tmp_path, pin_fails=True)
    record = runner.run_case(parse_playbook(LEGACY_PB).cases()[0])
    assert record["status"] == "failed" and "taskset -a -p -c 0 100" in record["error"]
    assert "Invalid argument" in record["error"]
    assert not any("-m isoperf client" in c for c in client.commands)
    assert any(c.startswith("for i in") and " 100 " in c for c in server.commands)  # server_stop_command


def test_server_stack_iso_starts_isostackd_on_the_server_guest_before_the_server(tmp_path):
    runner, client, server = placing_runner(tmp_path)
    case = parse_playbook(LEGACY_PB + "    server_stack: iso\n").cases()[0]
    assert case.stack_label == "legacy→iso"
    record = runner.run_case(case)
    assert record["status"] == "ok", record["error"]
    assert record["server_stack"] == "iso" and record["stack"] == "legacy"
    start, isostackd = record["commands"]["server"], record["commands"]["server_isostackd"]
    assert " --stack iso " in start and "ISOSTACK_SOCKET=/run/isostack/isostackd.sock" in start
    assert " --cpu 1 " in isostackd and "isostackd" not in record["commands"]  # none on the client guest
    assert server.commands.index(isostackd) < server.commands.index(start)  # the server attaches to it
    assert record["placement"]["iso-b"]["mode"] == "isostack" and record["placement"]["iso-b"]["app_cpus"] == [0]
    assert record["commands"]["pin_server"] == "taskset -a -p -c 0 100"
    assert record["server_isostackd"][0]["cpu"] == 1 and record["server_isostackd"][0]["command"] == isostackd
    assert not any("isostackd" in c for c in client.commands)

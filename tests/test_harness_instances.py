"""isostackd instances of a stack-iso case on the client guest (scripted guests, no VMs)."""

from __future__ import annotations

from harness_helpers import (
    ISO_PB,
    ISO_RESULT,
    ScriptedShell,
    command_kinds,
    instances_runner,
    iso_runner,
    local_topology,
)
from rich.console import Console

from testbed.harness.guestcmd import GuestLayout
from testbed.harness.playbook import parse_playbook
from testbed.harness.runner import Runner


def test_stack_iso_case_runs_isostackd_around_the_pinned_client(tmp_path):
    runner, client = iso_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    kinds = []
    for c in client.commands:
        if "isostack.dispatcher" in c:
            kinds.append("start")
        elif c.startswith("test -S"):
            kinds.append("ready")
        elif "-m isoperf client" in c:
            kinds.append("client")
        elif c.startswith("kill 200"):
            kinds.append("stop")
    assert kinds == ["start", "ready", "client", "stop"]
    assert "--cpu 1 " in record["commands"]["isostackd"]  # the last of iso-a's 2 vCPUs
    assert record["commands"]["client"].startswith("taskset -c 0 ")
    assert record["isostackd_log"][:2] == ["isostackd: CPU 1", "isostackd: stopped"]
    assert record["isostack_traffic"] == {"frontend": "python", "client": {
        "send_bytes": 6400, "recv_bytes": 0, "apps_attached": 1, "program_bytes": 6400, "carried": True}}


def test_stack_iso_case_whose_isostackd_carried_nothing_fails_loudly(tmp_path):
    """The program reports figures, but isostackd's counters show no traffic: not an iso result."""
    client = ScriptedShell("iso-a", ISO_RESULT, carried=0)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    runner = Runner(local_topology(), {"iso-a": client, "iso-b": ScriptedShell("iso-b", ISO_RESULT)}, GuestLayout(),
                    None, console)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "failed" and record["isoperf"]["bytes"] == 6400
    assert record["error"] == ("the isoperf client on iso-a claims IsoStack but isostackd carried 0 bytes (1"
                               " applications attached) while isoperf reported 6400: the traffic did not go"
                               " through IsoStack")


def test_stack_iso_case_fails_clearly_when_isostackd_dies(tmp_path):
    runner, client = iso_runner(tmp_path, daemon_dies=True)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "failed"
    assert record["error"].startswith("iso-a: isostackd exited: isostackd: CPU 1")
    assert not any("-m isoperf client" in c for c in client.commands)


def test_stack_iso_with_locks_starts_isostackd_with_uncontended_locks(tmp_path):
    runner, client = iso_runner(tmp_path)
    case = parse_playbook(ISO_PB + "    locks: [true]\n").cases()[0]
    assert case.locks and case.label.startswith("stream-iso iso+locks ")
    record = runner.run_case(case)
    assert record["status"] == "ok", record["error"]
    assert record["locks"] is True
    assert record["commands"]["isostackd"].endswith(
        "--socket /run/isostack/isostackd.sock --uncontended-locks > /tmp/isostackd.log 2>&1 < /dev/null & echo $!"
    )


def test_two_instances_each_on_its_vcpu_with_its_queue_pair(tmp_path):
    runner, client, server = instances_runner(tmp_path)
    case = parse_playbook(ISO_PB + "    instances: [2]\n    so_busy_poll_us: 0\n").cases()[0]
    assert case.instances == 2 and case.stack_label == "iso×2"
    record = runner.run_case(case)
    assert record["status"] == "ok", record["error"]
    assert command_kinds(client.commands) == [
        "cleanup", "start 0", "start 1", "ready", "ready", "snapshot", "client", "snapshot", "stop 201", "stop 200"]
    assert command_kinds(server.commands) == ["legacy placement", "snapshot", "snapshot"]
    start0, start1 = record["commands"]["isostackd"], record["commands"]["isostackd-1"]
    assert " --cpu 1 " in start0 and " --queues 0 " in start0 and "--instance" not in start0
    assert " --cpu 2 " in start1 and " --instance 1 --queues 1 " in start1
    assert "--socket /run/isostack/isostackd-1.sock" in start1 and "> /tmp/isostackd-1.log" in start1
    assert all(" --so-busy-poll-us 0" in s for s in (start0, start1))
    assert record["commands"]["client"].startswith("taskset -c 0 env ISOSTACK_SOCKET=/run/isostack/isostackd.sock ")
    assert record["instances"] == 2 and record["so_busy_poll_us"] == 0
    inst0, inst1 = record["isostackd"]
    assert {k: inst1[k] for k in ("instance", "cpu", "queues", "socket", "pid")} == {
        "instance": 1, "cpu": 2, "queues": [1], "socket": "/run/isostack/isostackd-1.sock", "pid": 201}
    assert inst0["queues"] == [0] and inst0["pid"] == 200
    assert inst1["stats"] == {"loops": 1001, "sends": 11, "send_bytes": 3200, "apps_attached": 1}
    assert inst1["placement"] == ["/proc/irq/31/smp_affinity_list = 2"]
    assert record["isostackd_log"] == inst0["log"] and inst0["log"][0] == "t isostackd INFO pinned to CPU 1"
    placement = record["placement"]
    assert placement["iso-a"]["mode"] == "isostack" and placement["iso-b"]["mode"] == "legacy"
    assert placement["iso-b"]["command"] == ("PYTHONPATH=/opt python3 -m isostack.placement --legacy --irq-cpus 2"
                                             " --interfaces eth0")
    assert record["commands"]["pin_server"] == "taskset -a -p -c 0 100"  # the server app apart from vCPU 2
    assert record["placement_mode"] == "apart" and record["placement_axis"] is False
    assert {k: placement["iso-a"][k] for k in ("app_cpus", "irq_cpus", "irq_cpus_applied", "irq_cpus_measured",
                                               "irqs_as_intended")} == {
        "app_cpus": [0], "irq_cpus": [1, 2], "irq_cpus_applied": [1, 2], "irq_cpus_measured": [1, 2],
        "irqs_as_intended": True}
    # The scripted server guest ignores the placement (its queue 0 stays on vCPU 1): the record says so.
    assert {k: placement["iso-b"][k] for k in ("app_cpus", "irq_cpus", "irq_cpus_applied", "irqs_as_intended")} == {
        "app_cpus": [0], "irq_cpus": [2], "irq_cpus_applied": [1, 2], "irqs_as_intended": False}
    assert placement["iso-b"]["output"] == ["/proc/irq/29/smp_affinity_list = 0"]
    assert placement["iso-a"]["layout"]["irqs"]["virtio0-input.1"]["affinity"] == "2"
    assert placement["iso-a"]["interrupts"]["virtio0-input.1"] == [0, 0, 100]


def test_one_instance_on_a_two_queue_testbed_owns_every_queue(tmp_path):
    runner, client, _server = instances_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert " --cpu 2 " in record["commands"]["isostackd"] and "--queues" not in record["commands"]["isostackd"]
    assert "--so-busy-poll-us" not in record["commands"]["isostackd"]  # isostackd's default
    (inst,) = record["isostackd"]
    assert inst["queues"] == "all"
    assert inst["stats"] == {"loops": 1000, "sends": 10, "send_bytes": 3200, "apps_attached": 1}


def test_nap_max_and_epoll_busy_poll_reach_every_instance_and_the_record(tmp_path):
    runner, _client, _server = instances_runner(tmp_path)
    text = ISO_PB + "    instances: [2]\n    nap_max_us: 0\n    epoll_busy_poll_us: 25\n"
    record = runner.run_case(parse_playbook(text).cases()[0])
    assert record["status"] == "ok", record["error"]
    for start in (record["commands"]["isostackd"], record["commands"]["isostackd-1"]):
        assert " --nap-max-us 0 --epoll-busy-poll-us 25" in start and "--so-busy-poll-us" not in start
    assert (record["nap_max_us"], record["epoll_busy_poll_us"], record["so_busy_poll_us"]) == (0, 25, None)
    # the legacy case of the same test records neither (isostackd does not run) and starts no isostackd
    runner, client, _server = instances_runner(tmp_path)
    legacy_text = text.replace("    stack: iso\n", "    stack: [legacy, iso]\n")
    legacy = [c for c in parse_playbook(legacy_text).cases() if c.stack == "legacy"][0]
    record = runner.run_case(legacy)
    assert record["status"] == "ok", record["error"]
    assert record["nap_max_us"] is None and record["epoll_busy_poll_us"] is None
    assert not any("isostack.dispatcher" in c for c in client.commands)


def test_nap_max_and_epoll_busy_poll_not_set_leave_isostackd_defaults(tmp_path):
    runner, _client, _server = instances_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert "--nap-max-us" not in record["commands"]["isostackd"]
    assert "--epoll-busy-poll-us" not in record["commands"]["isostackd"]
    assert record["nap_max_us"] is None and record["epoll_busy_poll_us"] is None


def test_an_instance_that_dies_stops_the_others_and_fails_the_case(tmp_path):
    runner, client, _server = instances_runner(tmp_path, dying_instance=1)
    record = runner.run_case(parse_playbook(ISO_PB + "    instances: 2\n").cases()[0])
    assert record["status"] == "failed"
    assert record["error"].startswith("iso-a: isostackd instance 1 exited: t isostackd INFO pinned to CPU 2")
    assert "client" not in command_kinds(client.commands)
    assert command_kinds(client.commands)[-2:] == ["stop 201", "stop 200"]
    assert [i["instance"] for i in record["isostackd"]] == [0, 1]  # their logs are still recorded

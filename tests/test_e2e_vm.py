"""End to end, as a user runs it: `testbed up`, `fab run-benchmark`, `testbed down`.

Two guests boot under libvirt (TCG where KVM does not work), attached to the vhea device model;
a verified TCP stream runs between them and the device model's counters must account for every
byte the client sent. Drives the CLIs in subprocesses, as `make benchmark` does (libvirt's
embedded driver also allows one root per process, and the unit tests open another).
"""

from __future__ import annotations

import json

import pytest
from vm_helpers import BIN, qemu_pids, run

from testbed.devicemodel import pid_alive
from testbed.state import Topology

pytestmark = pytest.mark.vm


def test_status_shows_running_guests_and_connected_ports(testbed, topology):
    out = run([str(BIN / "testbed"), "status"], timeout=60, env=testbed.env).stdout
    assert [g.name for g in topology.guests] == ["iso-a", "iso-b"]
    for g in topology.guests:
        assert g.name in out
    assert out.count("running") >= 2 and out.count("connected") >= 2
    assert topology.accel in ("kvm", "tcg")


def test_up_again_reuses_the_running_testbed(testbed, topology):
    out = testbed.up(timeout=120).stdout
    assert "already up" in out
    assert Topology.load(testbed.state / "topology.json").supervisor_pid == topology.supervisor_pid


def test_stream_crosses_the_device_model(testbed, topology):
    """Both stacks: the legacy case (1448 B) and the IsoStack case (64 B, isostackd on iso-a's last vCPU)."""
    results = testbed.state / "results"
    run([str(BIN / "fab"), "run-benchmark", "--playbook", "tests/fixtures/e2e-stream.yaml",
         "--results-dir", str(results)], timeout=400, env=testbed.env)
    run_json = next(results.glob("*/run.json"))
    cases = {c["stack"]: c for c in json.loads(run_json.read_text())["cases"]}
    assert set(cases) == {"legacy", "iso"}
    for stack, case in cases.items():
        assert case["status"] == "ok", (stack, case.get("error"), case.get("isostackd_log"))
        assert case["device_model"]["crossed"] is True, (stack, case["device_model"])
        # The control connection took the management path (iso-b's forwarded control port), not the data link.
        assert case["control"] == {"host": "10.0.2.2", "port": topology.guests[1].control_port,
                                   "path": "management", "why": None}
        perf = case["isoperf"]
        assert perf["stack"] == stack
        assert perf["verified"] is True and perf["errors"] == []
        assert perf["bytes"] > 0 and perf["throughput_bps"] > 0
        a = case["device_model"]["delta"]["a"]
        b = case["device_model"]["delta"]["b"]
        sent = perf["client_total_bytes"]  # payload bytes, warm-up included
        # Every payload byte went out of iso-a inside an Ethernet frame; headers add a few percent
        # (more for small segments: 66 B of headers per frame at worst).
        assert sent <= a["from_guest_bytes"] <= sent * 2.1 + 2_000_000
        # ... and came into iso-b (less what iso-b's full rx ring dropped, which TCP resent).
        assert b["to_guest_bytes"] >= perf["server_total_bytes"]
        if stack == "legacy":
            assert sent <= a["from_guest_bytes"] <= sent * 1.15 + 2_000_000
            # Frames: at least one per 64 KiB (TSO hands over up to 64 KiB at once), at most one per 100 B.
            assert sent // 65536 <= a["from_guest_frames"] <= sent // 100
    # The default placement `apart`, for both stacks: the NIC's interrupts on the last vCPU (isostackd's for iso),
    # the isoperf client and server on vCPU 0; in the real guests the interrupts must have gone there.
    last = topology.guests[0].vcpus - 1
    legacy = cases["legacy"]
    assert legacy["commands"]["client"].startswith("taskset -c 0 env ")
    assert legacy["commands"]["placement_client"].endswith(f"--legacy --irq-cpus {last} --interfaces eth0")
    assert legacy["commands"]["pin_server"].startswith("taskset -a -p -c 0 ")
    for stack, case in cases.items():
        assert case["placement_mode"] == "apart"
        for guest in ("iso-a", "iso-b"):
            p = case["placement"][guest]
            seen = {k: p.get(k) for k in ("irq_cpus_applied", "irq_cpus_measured", "irqs_counted", "irqs_elsewhere",
                                          "interrupts")}
            assert (p["app_cpus"], p["irq_cpus"]) == ([0], [last]), (stack, guest, p)
            # at most the one interrupt per vector that still reaches the old vCPU after the affinity moved
            assert p["irqs_as_intended"] is True, (stack, guest, seen)
            assert p["irq_cpus_applied"] == [last] and p["irqs_elsewhere"] <= len(p["interrupts"]), (stack, guest, seen)
    iso = cases["iso"]
    assert "--stack iso" in iso["commands"]["client"] and iso["commands"]["client"].startswith("taskset -c 0 ")
    assert f"--cpu {topology.guests[0].vcpus - 1}" in iso["commands"]["isostackd"]
    assert iso["isostackd_log"], "isostackd's log tail is recorded"


def test_down_leaves_nothing_running(testbed, topology):
    run([str(BIN / "testbed"), "down"], timeout=120, env=testbed.env)
    assert not (testbed.state / "topology.json").exists()
    assert not pid_alive(topology.device_model.pid)
    assert qemu_pids(testbed.state) == []

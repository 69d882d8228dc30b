"""Where the host CPU went per message (testbed.harness.cost) and its table in the report, on canned records."""

from __future__ import annotations

import pytest

from testbed.harness import cost, report


def record(stack: str, vcpu_seconds: tuple[float, float], mps: float = 100_000.0, interval: float = 10.0,
           **over) -> dict:
    r = {
        "test_name": "s", "size": 64, "connections": 1, "stack": stack, "locks": False, "instances": 1,
        "client": "iso-a", "server": "peer", "error": None, "repeat": 0,
        "commands": {"client": "taskset -c 0 env PYTHONPATH=/opt python3 -m isoperf client" if stack == "iso"
                     else "PYTHONPATH=/opt python3 -m isoperf client"},
        "isoperf": {"messages_per_s": mps, "cpu_binding": None},
        "host_cpu": {
            "interval_s": interval, "client": "iso-a",
            "guests": {"iso-a": {"role": "client", "other_threads_seconds": 0.5,
                                 "vcpus": [{"vcpu": i, "seconds": s} for i, s in enumerate(vcpu_seconds)]}},
            "vhea": {"seconds": 2.0}, "peer": {"seconds": 0.1},
        },
        "placement": {"iso-a": {"interrupts": {"virtio0-input.0": [0, 900], "virtio0-output.0": [3, 40]}}},
    }
    if stack == "iso":
        r["isostackd"] = [{"instance": 0, "cpu": 1}]
    r.update(over)
    return r


def test_iso_parts_by_role_add_up_to_the_guest_cost():
    b = cost.breakdown(record("iso", (6.0, 4.0)))
    # 6 CPU-s over 10 s at 100k msgs/s: 0.6 cores / 100k/s = 6 µs per message
    assert b == {"app vCPU": 6.0, "stack vCPU": 4.0, "QEMU other": 0.5, "vhea": 2.0, "peer/server": 0.1}
    per_host = 100_000.0 / ((6.0 + 4.0) / 10.0)
    assert sum(b[p] for p in cost.GUEST_PARTS if p in b) == pytest.approx(1e6 / per_host)


def test_legacy_roles_come_from_the_pinning_and_the_interrupts():
    unpinned = cost.breakdown(record("legacy", (3.0, 5.0)))
    assert unpinned["stack vCPU"] == 5.0 and unpinned["other vCPUs"] == 3.0 and "app vCPU" not in unpinned
    pinned = cost.breakdown(record("legacy", (3.0, 5.0), isoperf={"messages_per_s": 100_000.0, "cpu_binding": 0}))
    assert pinned["app vCPU"] == 3.0 and pinned["stack vCPU"] == 5.0
    assert cost.app_cpus({"commands": {"client": "taskset -c 1,2 env x"}}) == {1, 2}


def test_the_recorded_placement_decides_before_the_command_line_and_the_counts():
    """The harness records where it put the application and the interrupts (placement.<client>.app_cpus,
    irq_cpus): that is read first; a record from before it falls back to `taskset -c` in the command."""
    r = record("legacy", (3.0, 5.0))
    r["commands"]["client"] = "taskset -c 1 env PYTHONPATH=/opt python3 -m isoperf client"  # not what was recorded
    r["placement"]["iso-a"]["app_cpus"] = [0]
    assert cost.app_cpus(r) == {0}
    b = cost.breakdown(r)
    assert b["app vCPU"] == 3.0 and b["stack vCPU"] == 5.0
    quiet = record("legacy", (3.0, 5.0))  # no interrupt counted in the run: the vCPU they were meant for
    quiet["placement"]["iso-a"] = {"interrupts": {"virtio0-input.0": [0, 0]}, "irq_cpus": [1], "app_cpus": [0]}
    assert cost.stack_cpus(quiet) == {1}
    assert cost.breakdown(quiet)["stack vCPU"] == 5.0


def test_a_vm_to_vm_case_counts_the_server_guest_and_missing_figures_give_none():
    r = record("legacy", (1.0, 1.0))
    r["host_cpu"]["peer"] = None
    r["host_cpu"]["guests"]["iso-b"] = {"role": "server", "vcpu_seconds": 3.0, "vcpus": []}
    assert cost.breakdown(r)["peer/server"] == 3.0
    assert cost.breakdown(record("iso", (1.0, 1.0), isoperf={"messages_per_s": 0})) is None
    assert cost.breakdown(record("iso", (1.0, 1.0), host_cpu=None)) is None
    assert cost.breakdown(record("iso", (1.0, 1.0), host_cpu={"interval_s": 0, "client": "iso-a",
                                                              "guests": {"iso-a": {}}})) is None


def test_report_table_is_the_median_over_repeats():
    run = {"cases": [record("iso", (s, 1.0), repeat=i) for i, s in enumerate((1.0, 3.0, 2.0))]
           + [record("legacy", (8.0, 8.0), error="boom")]}
    rows = report.cost_rows(run)
    assert len(rows) == 1  # the failed legacy case has no figures
    row = dict(zip(report.COST_HEADERS, rows[0], strict=True))
    assert (row["stack"], row["runs"], row["app vCPU"], row["stack vCPU"], row["client guest"]) == (
        "iso", "3", "2.00", "1.00", "3.00")
    assert "## Where the host CPU went" in report.markdown(run)

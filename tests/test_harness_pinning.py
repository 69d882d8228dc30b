"""The placement modes as vCPUs per guest, the command lines that pin them, and the check of where the NIC's
interrupts went (sans-I/O, canned snapshots)."""

from __future__ import annotations

import shlex

import pytest

from testbed.harness import pinning, placement_cmd
from testbed.harness.guestcmd import GuestLayout


def test_legacy_apart_mirrors_isostack_interrupts_on_the_last_vcpu_application_on_vcpu_0():
    assert pinning.legacy("apart", 2) == pinning.GuestPlacement("apart", (0,), (1,))
    assert pinning.iso("apart", (1,)) == pinning.GuestPlacement("apart", (0,), (1,))
    assert pinning.legacy("apart", 4) == pinning.GuestPlacement("apart", (0,), (3,))


def test_irq_puts_the_application_on_the_interrupts_vcpu():
    assert pinning.legacy("irq", 2) == pinning.GuestPlacement("irq", (1,), (1,))
    assert pinning.legacy("irq", 1) == pinning.GuestPlacement("irq", (0,), (0,))
    assert pinning.iso("irq", (2,)) == pinning.GuestPlacement("irq", (2,), (2,))
    with pytest.raises(ValueError, match="one isostackd instance, the case has 2"):
        pinning.iso("irq", (1, 2))


def test_spread_pins_nothing_but_what_cpu_asks_for():
    assert pinning.legacy("spread", 2) == pinning.GuestPlacement("spread", None, None)
    assert pinning.legacy("spread", 2, cpu_binding=1) == pinning.GuestPlacement("spread", (1,), None)
    assert pinning.iso("spread", (1, 2)) == pinning.GuestPlacement("spread", None, (1, 2))


def test_apart_needs_two_vcpus():
    with pytest.raises(ValueError, match="'apart' needs 2 vCPUs .* the guest has 1"):
        pinning.legacy("apart", 1)


def test_record_names_mode_and_vcpus():
    assert pinning.legacy("apart", 2).to_record() == {"placement_mode": "apart", "app_cpus": [0], "irq_cpus": [1]}
    assert pinning.legacy("spread", 2).to_record() == {"placement_mode": "spread", "app_cpus": None,
                                                       "irq_cpus": None}


def test_commands_pin_the_whole_process_and_place_every_queue_on_one_vcpu():
    client = "PYTHONPATH=/opt python3 -m isoperf client --host 10.10.0.2"
    assert pinning.pinned(client, None) == client
    cmd = pinning.pinned(client, (0,))
    assert cmd == "taskset -c 0 env " + client
    assert shlex.split(cmd)[:4] == ["taskset", "-c", "0", "env"]
    assert pinning.pin_running_command(123, (1,)) == "taskset -a -p -c 1 123"
    layout = GuestLayout()
    assert placement_cmd.legacy_command(layout, irq_cpus=(1,)) == (
        "PYTHONPATH=/opt python3 -m isostack.placement --legacy --irq-cpus 1 --interfaces eth0")
    assert placement_cmd.legacy_command(layout) == "PYTHONPATH=/opt python3 -m isostack.placement --legacy" \
        " --interfaces eth0"


SNAP = """\
irq virtio0-input.0 29 {a} 10,20
irq virtio0-output.0 30 {a} 0,5
"""


def _layout(affinity: str, counts: str = "10,20") -> dict:
    return placement_cmd.parse_snapshot(SNAP.format(a=affinity).replace("10,20", counts))


def test_check_says_the_interrupts_went_where_meant():
    before, after = _layout("1"), _layout("1", "10,920")
    got = pinning.check((1,), before, placement_cmd.interrupts_delta(before, after))
    assert got == {"irq_cpus_applied": [1], "irq_cpus_measured": [1], "irqs_counted": 900, "irqs_elsewhere": 0,
                   "irqs_as_intended": True}


def test_check_allows_the_one_interrupt_per_vector_that_reaches_the_old_vcpu_after_a_move():
    """Seen in the 6.1 guests: after the affinity moved from vCPU 0 to 1, input.0 took 1 interrupt on vCPU 0
    and 165 on vCPU 1 during the run."""
    before = _layout("1")
    moved = placement_cmd.interrupts_delta(before, _layout("1", "11,185"))
    assert moved == {"virtio0-input.0": [1, 165], "virtio0-output.0": [0, 0]}
    assert pinning.check((1,), before, moved) == {
        "irq_cpus_applied": [1], "irq_cpus_measured": [0, 1], "irqs_counted": 166, "irqs_elsewhere": 1,
        "irqs_as_intended": True}
    twice = placement_cmd.interrupts_delta(before, _layout("1", "12,185"))  # two on the old vCPU: not a move
    assert pinning.check((1,), before, twice)["irqs_as_intended"] is False


def test_check_catches_interrupts_set_or_landing_elsewhere():
    before = _layout("1")
    on_zero = placement_cmd.interrupts_delta(before, _layout("1", "300,20"))  # affinity 1, yet vCPU 0 took them
    assert pinning.check((1,), before, on_zero) == {
        "irq_cpus_applied": [1], "irq_cpus_measured": [0], "irqs_counted": 290, "irqs_elsewhere": 290,
        "irqs_as_intended": False}
    spread = _layout("0-1")
    assert pinning.check((1,), spread, {})["irqs_as_intended"] is False
    assert pinning.check((1,), spread, {})["irq_cpus_applied"] == [0, 1]


def test_check_judges_nothing_when_spread_or_without_queue_irqs_and_survives_garbage():
    before = _layout("0-1")
    assert pinning.check(None, before, {"v": [3, 4]}) == {
        "irq_cpus_applied": [0, 1], "irq_cpus_measured": [0, 1], "irqs_counted": 7, "irqs_elsewhere": None,
        "irqs_as_intended": None}
    assert pinning.check((1,), {"irqs": {}}, {}) == {"irq_cpus_applied": [], "irq_cpus_measured": [],
                                                     "irqs_counted": 0, "irqs_elsewhere": 0, "irqs_as_intended": None}
    assert pinning.check((1,), None, None)["irqs_as_intended"] is None
    weird = {"irqs": {"x": {"affinity": "ff-zz"}, "y": "nonsense"}}
    assert pinning.check((1,), weird, {"x": [0, "a", -3, 2, True], "y": "nonsense"}) == {
        "irq_cpus_applied": [], "irq_cpus_measured": [3], "irqs_counted": 2, "irqs_elsewhere": 2,
        "irqs_as_intended": False}

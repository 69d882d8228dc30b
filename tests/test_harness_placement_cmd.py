"""isostackd instances and NIC placement: the plan, the command lines and the parse of their output."""

from __future__ import annotations

import pytest

from testbed.harness import isostackd_cmd, placement_cmd
from testbed.harness.guestcmd import GuestLayout


def test_one_instance_keeps_the_last_vcpu_and_every_queue():
    (only,) = placement_cmd.plan(1, vcpus=2, queue_pairs=1)
    assert only == placement_cmd.InstancePlan(0, 1, None, "/run/isostack/isostackd.sock")
    assert only.to_dict() == {"instance": 0, "cpu": 1, "queues": "all", "socket": "/run/isostack/isostackd.sock"}
    assert placement_cmd.plan(1, vcpus=3, queue_pairs=2)[0].cpu == 2


def test_instances_take_the_last_vcpus_and_share_the_queue_pairs():
    assert placement_cmd.plan(2, vcpus=3, queue_pairs=2) == [
        placement_cmd.InstancePlan(0, 1, (0,), "/run/isostack/isostackd.sock"),
        placement_cmd.InstancePlan(1, 2, (1,), "/run/isostack/isostackd-1.sock"),
    ]
    assert [(p.cpu, p.queues) for p in placement_cmd.plan(2, vcpus=4, queue_pairs=4)] == [(2, (0, 2)), (3, (1, 3))]
    assert [(p.cpu, p.queues) for p in placement_cmd.plan(3, vcpus=4, queue_pairs=4)] == [
        (1, (0, 3)), (2, (1,)), (3, (2,))]


def test_socket_paths_are_where_the_front_end_discovers_instances():
    from isostack.attach import instance_path

    for k in range(4):
        assert placement_cmd.socket_path(k) == instance_path(isostackd_cmd.SOCKET, k)


@pytest.mark.parametrize(
    "n, vcpus, queues, flags",
    [(2, 2, 1, "--vcpus 3 --queues 2"), (2, 3, 1, "--vcpus 3 --queues 2"), (2, 2, 2, "--vcpus 3 --queues 2"),
     (1, 1, 1, "--vcpus 2 --queues 1"), (3, 8, 2, "--vcpus 8 --queues 3")],
)
def test_a_guest_too_small_for_the_instances_is_a_value_error_and_the_flags_fix_it(n, vcpus, queues, flags):
    with pytest.raises(ValueError, match=rf"{n} isostackd instance\(s\) need"):
        placement_cmd.plan(n, vcpus, queues)
    assert placement_cmd.testbed_flags(n, vcpus, queues) == flags
    words = flags.split()  # "--vcpus V --queues Q": a testbed with those fits
    assert placement_cmd.plan(n, int(words[1]), int(words[3]))


def test_legacy_placement_command_is_what_the_placement_cli_parses():
    cmd = placement_cmd.legacy_command(GuestLayout(remote_root="/opt", python="python3"))
    assert cmd == "PYTHONPATH=/opt python3 -m isostack.placement --legacy --interfaces eth0"


LOG = """\
2026-11-26 12:00:00,001 isostackd INFO pinned to CPU 2
2026-11-26 12:00:00,002 isostackd INFO placement: /proc/irq/31/smp_affinity_list = 2
2026-11-26 12:00:00,003 isostackd INFO placement: /sys/class/net/eth0/queues/rx-1/rps_cpus = 00000004
2026-11-26 12:00:00,004 isostackd INFO stats: {'loops': 1, 'sends': 0}
2026-11-26 12:00:09,000 isostackd INFO app 1 attached (pid 77, 4 sockets, 1 bytes shared)
2026-11-26 12:00:10,000 isostackd INFO stats: {'loops': 900, 'sends': 42, 'epoll_busy_poll_us': None}
"""


def test_stats_and_placement_come_from_isostackds_log():
    assert placement_cmd.parse_stats(LOG) == {"loops": 900, "sends": 42, "epoll_busy_poll_us": None}
    assert placement_cmd.placement_lines(LOG) == [
        "/proc/irq/31/smp_affinity_list = 2", "/sys/class/net/eth0/queues/rx-1/rps_cpus = 00000004"]
    assert placement_cmd.parse_stats("isostackd INFO pinned to CPU 2\n") is None
    # a log is guest output: something that is not a literal is no stats, not an exception
    assert placement_cmd.parse_stats("x stats: {'a': __import__('os')}\n") is None
    assert placement_cmd.parse_stats("x stats: {'a': 1\n") is None


SNAPSHOT_BEFORE = """\
irq virtio0-input.0 29 1 7,0,1
irq virtio0-output.0 30 1 10,0,0
irq virtio0-input.1 31 2 0,0,0
irq virtio0-output.1 32 2 0,0,1
rps rx-0 2
rps rx-1 4
xps tx-0 2
xps tx-1 4
"""
SNAPSHOT_AFTER = SNAPSHOT_BEFORE.replace("29 1 7,0,1", "29 1 7,500,1").replace("31 2 0,0,0", "31 2 0,0,700")


def test_layout_snapshot_and_where_the_interrupts_went():
    before = placement_cmd.parse_snapshot(SNAPSHOT_BEFORE)
    assert before["irqs"]["virtio0-input.1"] == {"irq": 31, "affinity": "2", "counts": [0, 0, 0]}
    assert before["rps_cpus"] == {"rx-0": "2", "rx-1": "4"} and before["xps_cpus"]["tx-1"] == "4"
    after = placement_cmd.parse_snapshot(SNAPSHOT_AFTER + "garbage line\nirq broken\n")
    assert placement_cmd.interrupts_delta(before, after) == {
        "virtio0-input.0": [0, 500, 0], "virtio0-output.0": [0, 0, 0], "virtio0-input.1": [0, 0, 700],
        "virtio0-output.1": [0, 0, 0]}
    assert placement_cmd.summary(before) == "input.0→1 output.0→1 input.1→2 output.1→2, RPS rx-0=2 rx-1=4"
    assert placement_cmd.parse_snapshot("") == {"irqs": {}, "rps_cpus": {}, "xps_cpus": {}}


def test_snapshot_command_reads_the_data_nic():
    cmd = placement_cmd.snapshot_command()
    assert "/sys/class/net/eth0/device" in cmd and "/proc/interrupts" in cmd and "xps_cpus" in cmd

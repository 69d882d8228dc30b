"""Several isostackd instances, the parts outside the front-end: discovery of instance sockets, the listen group
entry, the source ports whose hash lands on a queue, per-queue placement.  The reuseport BPF program is tested in
test_isostack_dispatcher_kernel.py; the front-end's side, against two running dispatchers, in
test_isostack_frontend_instance.py and test_isostack_frontend_steering.py."""

import errno
import os

import pytest
from test_isostack_layout import entry

from isostack import placement
from isostack.attach import discover, instance_path
from isostack.layout import BadEntry, Geometry, Op, decode_command, encode_listen_group, listen_group
from isostack.rss import Classifier, ports_for_queues

GEO = Geometry(max_sockets=32, tx_size=1 << 14, rx_size=1 << 14)
KEY = bytes(range(7, 47))  # any 40 bytes
SETTINGS = {"queues": 2, "key": KEY.hex(), "hash_types": ["ipv4", "tcp4"], "reta": [0, 1] * 64, "rules": []}
two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


# ---------------------------------------------------------------- pure parts


def test_instance_paths_and_discovery(tmp_path):
    base = str(tmp_path / "isostackd.sock")
    assert instance_path(base, 0) == base
    assert instance_path(base, 3) == str(tmp_path / "isostackd-3.sock")
    assert discover(base) == []
    for name in ("isostackd.sock", "isostackd-2.sock", "isostackd-1.sock", "isostackd-x.sock", "isostackd-01.sock",
                 "isostackd-99.sock", "other-1.sock"):
        (tmp_path / name).touch()
    assert discover(base) == [(0, base), (1, instance_path(base, 1)), (2, instance_path(base, 2))]


def test_listen_group_roundtrip_and_hostile_groups():
    b, c, ip = encode_listen_group([3, 1], {0: 1, 1: 0, 5: 1})
    assert listen_group(b, c, ip) == ([3, 1], {0: 1, 1: 0, 5: 1})
    cmd = decode_command(entry(Op.LISTEN, a=16, b=b, c=c, ip=ip), 5, 3, Geometry(max_sockets=8))
    assert (cmd.b, cmd.c) == (2, c)
    hostile = [
        entry(Op.LISTEN, a=16, b=17),  # more members than the entry can describe
        entry(Op.LISTEN, a=16, b=2, c=0xFFFFFFFFFFFFFF03),  # rx queue 0 owned by member 3 of 2
        entry(Op.LISTEN, a=16, b=2, c=(1 << 64) - 1, ip=b"\x00\xff"),  # CPU 255
    ]
    for raw in hostile:
        with pytest.raises(BadEntry) as e:
            decode_command(raw, 5, 3, Geometry(max_sockets=8))
        assert e.value.err == errno.EINVAL
    with pytest.raises(ValueError):
        encode_listen_group([0, 1], {2: 2})


def test_ports_for_queues_land_on_the_wanted_queues():
    cl = Classifier(SETTINGS)
    got = list(ports_for_queues(cl, "10.0.0.1", "10.0.0.2", 5001, {1}, 40000, 40999, start=40000, limit=1000))
    assert 300 < len(got) < 700  # reta alternates: about half of the ports
    for port, q in got:
        assert q == 1
        # independently: frames of that connection arrive from the peer (src) to us (dst)
        assert cl.queue("10.0.0.2", "10.0.0.1", 5001, port) == 1
    others = {p for p, _ in ports_for_queues(cl, "10.0.0.1", "10.0.0.2", 5001, {0}, 40000, 40999, start=40000)}
    assert others.isdisjoint(p for p, _ in got) and len(others) + len(got) == 1000
    pinned = Classifier({**SETTINGS, "reta": [0] * 128})
    assert list(ports_for_queues(pinned, "10.0.0.1", "10.0.0.2", 5001, {1}, 40000, 40999, limit=50)) == []


def test_place_only_the_instances_queues(tmp_path):
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    dev = sysfs / "devices/pci0000:00/0000:00:03.0/virtio1"
    drv = sysfs / "bus/virtio/drivers/virtio_net"
    drv.mkdir(parents=True)
    dev.mkdir(parents=True)
    (dev / "driver").symlink_to(drv)
    iface = sysfs / "class/net/eth1"
    for q in ("rx-0", "rx-1", "tx-0", "tx-1"):
        (iface / "queues" / q).mkdir(parents=True)
    (iface / "device").symlink_to(dev)
    proc.mkdir()
    (proc / "interrupts").write_text(
        " 25:  10  0  PCI-MSI 49153-edge  virtio1-input.0\n"
        " 26:   5  0  PCI-MSI 49154-edge  virtio1-output.0\n"
        " 27:  10  0  PCI-MSI 49155-edge  virtio1-input.1\n"
        " 28:   5  0  PCI-MSI 49156-edge  virtio1-output.1\n"
    )
    for irq in (25, 26, 27, 28):
        (proc / "irq" / str(irq)).mkdir(parents=True)
    placement.place(1, None, str(proc), str(sysfs), queues={1})
    placement.place(0, None, str(proc), str(sysfs), queues={0})
    assert [(proc / f"irq/{i}/smp_affinity_list").read_text() for i in (25, 26, 27, 28)] == ["0\n", "0\n", "1\n", "1\n"]
    assert (iface / "queues/rx-0/rps_cpus").read_text() == "00000001\n"
    assert (iface / "queues/rx-1/rps_cpus").read_text() == "00000002\n"
    assert (iface / "queues/tx-1/xps_cpus").read_text() == "00000002\n"


# ---------------------------------------------------------------- two dispatchers over loopback

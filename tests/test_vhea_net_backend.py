"""NetBackend: the device side of the VhostUserBackend interface (what the handler asks of a VirtioNet).

The requests over a real socket are in test_vhea_backend.py / test_vhea_hostile.py; these look at the device
alone, once (no datapath involved).
"""

from __future__ import annotations

import inspect
import mmap
import os

import pytest

from vhea.net import VirtioNet, offered_features
from vhea.net_backend import NetBackend
from vhea.protocol import MemoryRegion, VringAddr
from vhea.vhost_backend import BackendError, VhostUserBackend


def test_net_backend_has_every_member_of_the_interface_with_its_parameters():
    dev = NetBackend(2, "p")
    assert isinstance(dev, VirtioNet)
    for name, member in vars(VhostUserBackend).items():
        if name.startswith("_"):
            continue
        assert hasattr(dev, name), name
        if callable(member):
            assert list(inspect.signature(getattr(NetBackend, name)).parameters) == \
                list(inspect.signature(member).parameters), name
    assert (dev.queue_num, dev.vring_count) == (2, 4)
    assert dev.offered_features() == offered_features(2)


def _memfd(size: int = 1 << 16) -> int:
    fd = os.memfd_create("vhea-test-guest")
    os.ftruncate(fd, size)
    return fd


def test_memory_table_maps_and_a_refused_one_keeps_the_old_memory():
    dev = NetBackend(1, "p")
    region = MemoryRegion(0x10000, 1 << 16, 0x7000_0000, 0)
    dev.set_mem_table((region,), [_memfd()])
    old = dev.mem
    assert old is not None and old.gpa(0x10000, 16) is not None
    fd = _memfd(4096)
    with pytest.raises(BackendError, match="its fd has"):
        dev.set_mem_table((region,), [fd])
    with pytest.raises(OSError):
        os.fstat(fd)  # consumed even though mapping failed
    assert dev.mem is old
    dev.reset()
    assert dev.mem is None


def test_ring_configuration_and_get_vring_base_stops_the_ring():
    dev = NetBackend(1, "p")
    dev.set_mem_table((MemoryRegion(0x10000, 1 << 16, 0x7000_0000, 0),), [_memfd()])
    with pytest.raises(BackendError, match="not a power of two"):
        dev.set_vring_num(0, 100)
    dev.set_vring_num(0, 256)
    dev.set_vring_base(0, 0)
    dev.set_vring_addr(VringAddr(0, 0, 0x7000_0000, 0x7000_2000, 0x7000_1000, 0))
    kick = os.eventfd(0)
    dev.set_vring_kick(0, kick)
    dev.set_vring_enable(0, True)
    ring = dev.rings[0]
    assert ring.ready and ring.kick_fd == kick
    assert dev.get_vring_base(0) == 0
    assert not ring.started and ring.kick_fd is None
    with pytest.raises(OSError):
        os.fstat(kick)  # closed by GET_VRING_BASE
    with pytest.raises(BackendError, match="outside the mapped memory"):
        dev.set_vring_addr(VringAddr(0, 0, 0x1000, 0x2000, 0x3000, 0))
    dev.reset()
    assert ring.num == 0 and not ring.mapped


def test_memory_table_remap_stops_a_ring_that_no_longer_fits(caplog):
    dev = NetBackend(1, "p")
    dev.set_mem_table((MemoryRegion(0x10000, 1 << 16, 0x7000_0000, 0),), [_memfd()])
    dev.set_vring_num(1, 256)
    dev.set_vring_addr(VringAddr(1, 0, 0x7000_0000, 0x7000_2000, 0x7000_1000, 0))
    dev.set_mem_table((MemoryRegion(0x10000, 1 << 16, 0x6000_0000, 0),), [_memfd()])
    assert "outside the mapped memory" in dev.rings[1].error
    assert "port p: ring 1 stopped: " in caplog.text
    dev.reset()


def test_mmap_is_released_by_reset():
    dev = NetBackend(1, "p")
    dev.set_mem_table((MemoryRegion(0x10000, 1 << 16, 0x7000_0000, 0),), [_memfd()])
    maps = [r.map for r in dev.mem.regions]
    dev.reset()
    assert all(isinstance(m, mmap.mmap) and m.closed for m in maps)

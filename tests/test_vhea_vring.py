"""Vring's batch fast paths (which `vhea bench` measures) must behave exactly as the checked loop.

Python datapath: a batch of >= NP_BATCH single-buffer tx descriptors is translated with numpy; anything odd in it (a
chain, a bad address, a wrong direction) falls back to the loop, which names the problem and stops the ring.
Native datapath (_datapath.c): the same batches in one C call, with the same checks and error texts.
"""

from __future__ import annotations

import pytest
from vhea_helpers import BCAST, MAC_A, MAC_B, frame, frontend, receive_n, running_server, wait_for

from vhea import native, vring
from vhea.frontend import BUF_SIZE
from vhea.server import loop as server_module
from vhea.vring import VRING_DESC_F_WRITE


@pytest.fixture(params=["numpy", "loop", "native"])
def path(request, monkeypatch):
    if request.param == "native":
        if native.MOD is None:
            pytest.skip(f"native datapath not available: {native.why_not}")
        monkeypatch.setattr(server_module, "DEFAULT_DATAPATH", "native")
        return request.param
    monkeypatch.setattr(server_module, "DEFAULT_DATAPATH", "python")
    if request.param == "numpy":
        if vring._np is None:
            pytest.skip("numpy is not installed")
    else:
        monkeypatch.setattr(vring, "NP_BATCH", 10**9)
    return request.param


def test_big_batch_forwards_in_order(sockdir, path, monkeypatch):
    fast = []
    real = vring.Vring._single_buffer_views_np
    monkeypatch.setattr(vring.Vring, "_single_buffer_views_np",
                        lambda self, *a: fast.append(real(self, *a)) or fast[-1])
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        frames = [frame(MAC_B, MAC_A, i, size=60 + i) for i in range(100)]
        for f in frames[:60]:
            a.send_frame(f, kick=False)
        a.kick(a.tx_ring())
        assert receive_n(b, 60) == frames[:60]
        for i, f in enumerate(frames[60:]):
            a.send_frame(f, kick=False, split=40 if i == 20 else 0)  # a chained descriptor: the loop takes it
        a.kick(a.tx_ring())
        assert receive_n(b, 40) == frames[60:]
    if path == "numpy":
        assert fast and fast[0] is not None and len(fast[0]) == 60
    else:
        assert not fast


@pytest.mark.parametrize("attack", ["outside", "writable"])
def test_bad_descriptor_inside_a_big_batch_stops_the_ring(sockdir, path, attack):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        tx = a.tx_ring()
        for i in range(40):
            a.send_frame(frame(BCAST, MAC_A, i), kick=False)
        d = tx.free.pop()
        if attack == "outside":
            a.write_desc(tx, d, a.gpa(a.mem_size - 10), 100, 0)
        else:
            a.write_desc(tx, d, a.gpa(tx.bufs + d * BUF_SIZE), 100, VRING_DESC_F_WRITE)
        a.publish(tx, d, kick=False)
        for i in range(40, 60):
            a.send_frame(frame(BCAST, MAC_A, i), kick=False)
        a.kick(tx)
        ring = server.ports["a"].handler.device.rings[1]
        assert wait_for(lambda: ring.error is not None)
        assert ("outside the mapped memory" if attack == "outside" else "device-writable") in ring.error
        assert server.stats()["ports"]["a"]["from_guest_frames"] == 0  # the whole batch is refused


def test_numpy_and_loop_give_the_same_views(path):
    """Both ways over two regions, as QEMU's memory below and above 4 GiB."""
    if path == "native":
        pytest.skip("a Vring-level test of the Python path (test_vhea_native.py compares C and Python)")
    import mmap
    import struct

    from vhea.memory import GuestMemory, MappedRegion
    from vhea.protocol import MemoryRegion, VringAddr

    m1, m2 = mmap.mmap(-1, 1 << 16), mmap.mmap(-1, 1 << 16)
    regions = [MappedRegion(MemoryRegion(0x1000_0000, 1 << 16, 0x7000_0000, 0), m1, memoryview(m1)),
               MappedRegion(MemoryRegion(0x2_0000_0000, 1 << 16, 0x7100_0000, 0), m2, memoryview(m2))]
    mem = GuestMemory(regions)
    r = vring.Vring(1)
    r.set_num(32)
    r.addr = VringAddr(1, 0, 0x7000_0000, 0x7000_2000, 0x7000_1000, 0)
    r.map(mem)
    for i in range(32):
        base = 0x1000_0000 + 0x4000 if i % 2 else 0x2_0000_0000
        struct.pack_into("<QIHH", m1, 16 * i, base + 64 * i, 60 + i, 0, 0)
    views = r.single_buffer_views(list(range(32)), mem)
    assert [len(v) for v in views] == [60 + i for i in range(32)]
    m1[0x4000 + 64:0x4000 + 64 + 61] = b"x" * 61
    assert bytes(views[1]) == b"x" * 61
    del views
    r.unmap()
    mem.close()

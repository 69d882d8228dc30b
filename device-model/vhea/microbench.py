"""The datapath alone: port a -> port b inside one process, no front-end, no syscalls, no scheduling.

Two ports of a Server (not serving) get rings in an anonymous mapping laid out as a front-end would: port a's
tx ring holds `ring` lone descriptors with one frame each, port b's rx ring `ring` 2 KiB device-writable buffers
(64 KiB TSO frames: 33-descriptor chains on tx and MRG_RXBUF buffers on rx). Each round makes every
descriptor available again on both rings and calls the server's tx service once, exactly as a kick would:
pull, switch, classify (one queue pair: skipped), rx write, used rings, counters. The time per frame is what
one fully busy vhea core spends, so 1e6 / us_per_frame is its frames/s ceiling. The stages are timed alone
too (tx pull; rx write), the rest of the batch (switch, runs, counters, the Python glue) is the difference.
"""

from __future__ import annotations

import mmap
import struct
import time
from array import array

from .bench_frames import TSO_MSS, TSO_VHDR, plain_frame, tso_test_frame
from .datapath import tx_pull
from .memory import GuestMemory, MappedRegion
from .net import NET_HDR_LEN, PLAIN_HDR
from .offload import OFFLOAD_FEATURES
from .protocol import (
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    MemoryRegion,
    VringAddr,
    bit,
)
from .server import Server
from .vring import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

BUF = 2048
FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX) | \
    bit(VIRTIO_RING_F_INDIRECT_DESC) | OFFLOAD_FEATURES


class _Side:
    """One port's guest memory with one ring (index 1: tx of a, or 0: rx of b) and its buffers."""

    def __init__(self, server, port: str, index: int, num: int, bufs: int) -> None:
        self.num = num
        self.size = 0x10000 + bufs * BUF
        self.m = mmap.mmap(-1, self.size)
        self.gpa, self.uva = 0x100000, 0x7000_0000
        self.mem = GuestMemory([MappedRegion(MemoryRegion(self.gpa, self.size, self.uva, 0), self.m,
                                             memoryview(self.m))])
        from .handler import BackendHandler
        from .net_backend import NetBackend

        p = server.ports[port]
        p.handler = BackendHandler(port, NetBackend(1, port))
        dev = p.handler.device
        dev.mem = self.mem
        dev.set_features(FEATURES)
        dev.native = server._native
        for ring, counters in zip(dev.rings, p.queue_counters, strict=True):
            ring.counters = counters
        r = dev.rings[index]
        r.set_num(num)
        r.addr = VringAddr(index, 0, self.uva, self.uva + 0x9000, self.uva + 0x8000, 0)
        r.map(self.mem)
        r.started = r.enabled = True
        self.ring, self.dev, self.port = r, dev, p
        self.avail16 = memoryview(self.m)[0x8000:0x8000 + 6 + 2 * num].cast("H")
        self.bufs = 0x10000

    def desc(self, i: int, addr_off: int, length: int, flags: int, nxt: int = 0) -> None:
        struct.pack_into("<QIHH", self.m, 16 * i, self.gpa + addr_off, length, flags, nxt)

    def offer(self, heads: list[int]) -> None:
        """Make `heads` available again after whatever was consumed. A whole ring of heads lands on the same
        slots every round, so then only the index moves (the harness should cost next to nothing)."""
        r = self.ring
        start = r.last_avail_idx
        if len(heads) != self.num or not getattr(self, "_full", False):
            for k, h in enumerate(heads):
                self.avail16[2 + (start + k) % self.num] = h
            self._full = len(heads) == self.num and start % self.num == 0
        self.avail16[1] = (start + len(heads)) & 0xFFFF

    def close(self) -> None:
        self.ring.unmap()
        self.mem.close()


def measure(datapath: str, kind: str = "plain", size: int = 64, rounds: int = 200, ring: int = 256) -> dict:
    """us per frame for the whole service (tx pull + switch + rx write) and for the tx pull and rx write alone."""
    server = Server("/nonexistent", ["a", "b"], datapath=datapath)
    server.switch.learn(bytes.fromhex("02000000000b"), "b", time.monotonic())  # a -> b, no flooding
    tso = kind == "tso"
    frame = tso_test_frame() if tso else plain_frame(size)
    vhdr = TSO_VHDR if tso else PLAIN_HDR
    data = vhdr + frame
    per = -(-len(data) // BUF)  # descriptors per tx frame
    nframes = ring // per
    a = _Side(server, "a", 1, ring, ring)
    rx_bufs_per_frame = -(-(len(frame) + NET_HDR_LEN) // BUF)
    b = _Side(server, "b", 0, ring, ring)
    try:
        heads = []
        for f in range(nframes):
            for k in range(per):
                d = f * per + k
                piece = data[k * BUF:(k + 1) * BUF]
                a.m[a.bufs + d * BUF:a.bufs + d * BUF + len(piece)] = piece
                last = k == per - 1
                a.desc(d, a.bufs + d * BUF, len(piece), 0 if last else VRING_DESC_F_NEXT, 0 if last else d + 1)
            heads.append(f * per)
        for d in range(ring):
            b.desc(d, b.bufs + d * BUF, BUF, VRING_DESC_F_WRITE)
        rx_heads = list(range(ring))
        fits = ring // rx_bufs_per_frame  # frames b's ring can take per round
        n = min(nframes, fits)
        heads = heads[:n]
        pa, ra = a.port, a.ring

        def round_trip() -> None:
            a.offer(heads)
            b.offer(rx_heads[:n * rx_bufs_per_frame])
            server._service_tx(pa, ra)

        for _ in range(5):
            round_trip()
        if b.port.to_guest_frames != 5 * n or b.port.drops or pa.drops:
            raise RuntimeError(f"microbench: frames lost ({b.port.to_guest_frames} of {5 * n}; drops "
                               f"{b.port.drops} {pa.drops})")
        t0 = time.perf_counter()
        for _ in range(rounds):
            round_trip()
        total = (time.perf_counter() - t0) / (rounds * n)
        b_frames = b.port.to_guest_frames
        if b_frames != (rounds + 5) * n or b.port.drops or pa.drops:
            raise RuntimeError(f"microbench: frames lost ({b_frames} of {(rounds + 5) * n}; drops {b.port.drops} "
                               f"{pa.drops})")
        got = bytes(b.m[b.bufs + NET_HDR_LEN:b.bufs + NET_HDR_LEN + min(len(frame), BUF - NET_HDR_LEN)])
        if got != frame[:len(got)]:
            raise RuntimeError("microbench: the frame in port b's buffer is not the one sent")
        # tx pull alone
        frames: list = []
        if server._native is not None:
            nat, mem = server._native, a.mem.native(server._native)

            def pull() -> None:
                a.offer(heads)
                r = ra
                consumed = tx_pull(nat, mem, r.view(), 256, 12, server._arena, server._meta, server._runs).consumed
                r.last_avail_idx = (r.last_avail_idx + consumed) & 0xFFFF
                r.used_idx = (r.used_idx + consumed) & 0xFFFF
        else:
            def pull() -> None:
                a.offer(heads)
                frames.clear()
                a.dev.pull_tx(ra, frames, {}, 256)
        t0 = time.perf_counter()
        for _ in range(rounds):
            pull()
        t_pull = (time.perf_counter() - t0) / (rounds * n)
        # rx write alone (plain frames; the TSO case goes through push_rx)
        if server._native is not None:
            src = array("q", [0, len(frame)] * n)
            buf = frame

            def push() -> None:
                b.offer(rx_heads[:n * rx_bufs_per_frame])
                if tso:
                    for _ in range(n):
                        b.dev._push(b.ring, buf, 1, 1, 66, TSO_MSS, 34, 16)
                else:
                    b.dev.rx_native(b.ring, buf, src, 0, n, PLAIN_HDR)
        else:
            many = [frame] * n

            def push() -> None:
                b.offer(rx_heads[:n * rx_bufs_per_frame])
                if tso:
                    for f in many:
                        b.dev._push_py(b.ring, f, 1, 1, 66, TSO_MSS, 34, 16)
                else:
                    b.dev.push_rx_many(b.ring, many, 0, n)
        t0 = time.perf_counter()
        for _ in range(rounds):
            push()
        t_push = (time.perf_counter() - t0) / (rounds * n)
    finally:
        a.close()
        b.close()
    us = total * 1e6
    return {"datapath": datapath, "frame": "64K TSO" if tso else str(size), "frame_bytes": len(frame),
            "frames": b_frames,
            "batch": n, "us_per_frame": us, "fps_per_core": 1e6 / us, "gbps_per_core": len(frame) * 8 / us / 1e3,
            "tx_pull_us": t_pull * 1e6, "rx_write_us": t_push * 1e6,
            "rest_us": max(0.0, us - (t_pull + t_push) * 1e6)}

"""The Python front-end cases of `vhea bench`: vhea.frontend as sender on port a and receiver on port b, each
in its own process, with plain frames and with 64 KiB TSO frames (whole to a TSO peer, and segmented for a peer
without offloads). The receiver counts frames and compares a sample of them with what was sent."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import NamedTuple

from .bench_frames import TSO_VHDR, plain_frame, tso_test_frame
from .bench_serve import WARMUP_S, port_counts, proc_cpu_s, vhea_stats, wait_until
from .frontend import BUF_SIZE, Frontend
from .net import NET_HDR_LEN
from .offload import (
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
)
from .vring import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE


class PythonFigure(NamedTuple):
    fps: float  # frames/s counted by the receiver
    cpu: float | None  # cores vhea used in the window
    into_b: int  # frames vhea put into port b in the window (its stats)
    taken_fps: float  # frames/s vhea took from port a's tx ring in the window
    verified: int  # frames the receiver compared byte for byte with what was sent
    bad: int  # of those, frames that differed


def _py_sender(path: str, kind: str, size: int, stop, ready) -> None:
    """Keep port a's tx ring full of one frame: reclaim used heads, republish them, one kick per batch."""
    fe = Frontend(path, ring_size=1024)
    try:
        fe.handshake()
        r = fe.tx_ring()
        if kind == "tso":
            frame, vhdr = tso_test_frame(), TSO_VHDR
        else:
            frame, vhdr = plain_frame(size), bytes(NET_HDR_LEN)
        data = vhdr + frame
        per = -(-len(data) // BUF_SIZE)
        heads = []
        for first in range(0, r.num - per + 1, per):
            for k in range(per):
                d = first + k
                piece = data[k * BUF_SIZE:(k + 1) * BUF_SIZE]
                fe.mem[r.bufs + d * BUF_SIZE:r.bufs + d * BUF_SIZE + len(piece)] = piece
                last = k == per - 1
                fe.write_desc(r, d, fe.gpa(r.bufs + d * BUF_SIZE), len(piece), 0 if last else VRING_DESC_F_NEXT,
                              0 if last else d + 1)
            heads.append(first)
        mem16 = fe.mem16
        used32 = memoryview(fe.mem)[r.used:r.used + 4 + 8 * r.num].cast("I")
        avail_ring = (r.avail + 4) // 2
        avail_idx_at = (r.avail + 2) // 2
        used_idx_at = (r.used + 2) // 2
        num = r.num
        free = heads
        avail_idx = 0
        last_used = 0
        ready.set()
        while not stop.is_set():
            used = mem16[used_idx_at]
            while last_used != used:
                free.append(used32[1 + 2 * (last_used % num)])
                last_used = (last_used + 1) & 0xFFFF
            if not free:
                time.sleep(0)
                continue
            for h in free:
                mem16[avail_ring + avail_idx % num] = h
                avail_idx = (avail_idx + 1) & 0xFFFF
            free = []
            mem16[avail_idx_at] = avail_idx
            os.eventfd_write(r.kick, 1)
    finally:
        fe.close()


#: the receiver compares one frame in this many with what the sender sent (more would slow it down)
VERIFY_EVERY = 1024


def _py_receiver(path: str, want: int | None, count, ready, stop, expect: bytes = b"", checks=None) -> None:
    """Post all rx buffers of port b, count frames (num_buffers of each first buffer), repost. Every
    VERIFY_EVERY-th frame's first buffer must start with `expect` (after the 12-byte header): checks[0] counts
    the frames compared, checks[1] those that differed."""
    fe = Frontend(path, ring_size=1024)
    try:
        fe.handshake(want_features=want)
        r = fe.rx_ring()
        mem = fe.mem
        mem16 = fe.mem16
        for d in range(r.num):
            fe.write_desc(r, d, fe.gpa(r.bufs + d * BUF_SIZE), BUF_SIZE, VRING_DESC_F_WRITE)
            mem16[(r.avail + 4) // 2 + d] = d
        avail_idx = r.num & 0xFFFF
        mem16[(r.avail + 2) // 2] = avail_idx
        fe.kick(r)
        used32 = memoryview(mem)[r.used:r.used + 4 + 8 * r.num].cast("I")
        avail_ring = (r.avail + 4) // 2
        avail_idx_at = (r.avail + 2) // 2
        used_idx_at = (r.used + 2) // 2
        num = r.num
        bufs = r.bufs
        last_used = 0
        frames = 0
        pending_bufs = 0  # buffers still to come of the current MRG_RXBUF frame
        ready.set()
        while not stop.is_set():
            used = mem16[used_idx_at]
            if used == last_used:
                count.value = frames
                time.sleep(0)
                continue
            while last_used != used:
                head = used32[1 + 2 * (last_used % num)]
                if pending_bufs == 0:
                    nb = mem[bufs + head * BUF_SIZE + 10] | mem[bufs + head * BUF_SIZE + 11] << 8
                    pending_bufs = max(nb, 1)
                    if expect and frames % VERIFY_EVERY == 0 and checks is not None:
                        at = bufs + head * BUF_SIZE + NET_HDR_LEN
                        checks[0] += 1
                        checks[1] += mem[at:at + len(expect)] != expect
                    frames += 1
                pending_bufs -= 1
                mem16[avail_ring + avail_idx % num] = head
                avail_idx = (avail_idx + 1) & 0xFFFF
                last_used = (last_used + 1) & 0xFFFF
            mem16[avail_idx_at] = avail_idx
            count.value = frames
            os.eventfd_write(r.kick, 1)
    finally:
        fe.close()


def _expected(kind: str, size: int, segmenting_peer: bool) -> bytes:
    """What the first receive buffer of each frame must start with (after the virtio header)."""
    if kind != "tso":
        return plain_frame(size)
    frame = tso_test_frame()
    if segmenting_peer:
        return frame[:14]  # segments: same Ethernet header; their IP/TCP headers are rewritten (offload tests)
    return frame[:BUF_SIZE - NET_HDR_LEN]


def bench_python(sockdir: str, kind: str, size: int, seconds: float, segmenting_peer: bool = False,
                 pid: int | None = None) -> PythonFigure:
    """Sender on port a, receiver on port b, each in its own process; `kind` "plain" (`size` bytes) or "tso"
    (64 KiB frames; `segmenting_peer`: the receiver takes no offloads, so vhea segments them)."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    rx_ready, tx_ready = ctx.Event(), ctx.Event()
    count = ctx.Value("q", 0, lock=False)
    checks = ctx.Array("q", 2, lock=False)
    no_guest = ((1 << 64) - 1) & ~sum(1 << b for b in (VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
                                                        VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN))
    rx = ctx.Process(target=_py_receiver, args=(f"{sockdir}/b.sock", no_guest if segmenting_peer else None, count,
                                                rx_ready, stop, _expected(kind, size, segmenting_peer), checks),
                     daemon=True)
    tx = ctx.Process(target=_py_sender, args=(f"{sockdir}/a.sock", kind, size, stop, tx_ready), daemon=True)
    rx.start()
    try:
        if not rx_ready.wait(15):
            raise RuntimeError("python receiver did not start")
        tx.start()
        if not tx_ready.wait(15):
            raise RuntimeError("python sender did not start")
        time.sleep(WARMUP_S)
        b0, a0 = port_counts(sockdir)
        n0, t0 = count.value, time.monotonic()
        c0 = proc_cpu_s(pid) if pid else 0.0
        time.sleep(seconds)
        n1, t1 = count.value, time.monotonic()
        cpu = (proc_cpu_s(pid) - c0) / (t1 - t0) if pid else None
        b1, a1 = port_counts(sockdir)
        return PythonFigure((n1 - n0) / (t1 - t0), cpu, b1 - b0, (a1 - a0) / (t1 - t0), checks[0], checks[1])
    finally:
        stop.set()
        for p in (tx, rx):
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        wait_until(lambda: not any(p["connected"] for p in vhea_stats(sockdir)["ports"].values()),
              "front-ends to disconnect", timeout=10)

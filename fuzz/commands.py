"""isostackd's command entries and shared queues (isostack/layout.py decode_command, isostack/queues.py).

Contract: decode_command raises BadEntry (with an errno) and nothing else for any 64-byte entry; a decoded
LISTEN group encodes back to the same (b, c) and CPUs; check_ring raises only BadEntry; ring_spans cover
exactly the bytes asked, inside the ring; CommandQueue.poll and NotifyRing.post/drain, over memory whose
every word the application wrote, never raise and never hand back more than the ring holds.

Input: the entry (64 bytes), a byte of choices, then the words the application controls (queue sequence,
ring head/tail/dropped counters) and a ring index/length.
"""

from __future__ import annotations

import errno
import mmap

from isostack.layout import (
    ENTRY,
    ENTRY_SIZE,
    BadEntry,
    Geometry,
    Op,
    check_ring,
    decode_command,
    encode_listen_group,
    listen_group,
    ring_spans,
)
from isostack.queues import CORRUPT, EMPTY, READY, CommandQueue, NotifyRing

from .reader import Reader

TARGETS = ("isostack.layout", "isostack.queues")

GEOMETRY = Geometry(max_sockets=4, cmdq_slots=4, tx_size=4096, rx_size=4096, notif_slots=4, notif_rings=1)
U64 = (1 << 64) - 1


class _Region:
    """What CommandQueue and NotifyRing use of queues.Region, over an anonymous mapping (no fd, no C)."""

    def __init__(self, size: int) -> None:
        self.mm = mmap.mmap(-1, size)
        self.buf = memoryview(self.mm)
        self.q = self.buf.cast("Q")
        self.base = 0


_REGION = _Region(4096)


def one_input(data: bytes) -> None:
    r = Reader(data)
    raw = r.take(ENTRY_SIZE).ljust(ENTRY_SIZE, b"\0")
    choice = r.u8()
    sock = choice & 3
    _seq, pos, *_ = ENTRY.unpack(raw)
    try:
        cmd = decode_command(raw, pos if choice & 4 else r.u64(), sock, GEOMETRY)
    except BadEntry as e:
        assert e.err in errno.errorcode and e.reason
    else:
        assert cmd.sock == sock and len(cmd.ip) == 16
        if cmd.op == Op.LISTEN and cmd.b:
            cpus, owners = listen_group(cmd.b, cmd.c, cmd.ip)
            assert encode_listen_group(cpus, owners) == (cmd.b, cmd.c, bytes(cpus))
    head, tail, size = r.u64(), r.u64(), 1 << (12 + (choice >> 4 & 3))
    try:
        used = check_ring(head, tail, size, "tx")
    except BadEntry as e:
        assert e.err == errno.EFAULT
    else:
        assert 0 <= used <= size
    index, length = r.u64(), r.u16() % (size + 1)
    spans = ring_spans(index, length, size)
    assert sum(n for _o, n in spans) == length and all(0 <= o and o + n <= size for o, n in spans)

    q = _REGION.q
    _REGION.buf[:] = bytes(len(_REGION.buf))
    words = [r.u64() for _ in range(8)]
    cq = CommandQueue(_REGION, 0, 64, GEOMETRY.cmdq_slots)
    cq.head = words[0]
    q[(64 + (cq.head & cq.mask) * ENTRY_SIZE) // 8] = words[1]
    state, view = cq.poll()
    assert state in (EMPTY, READY, CORRUPT) and (view is not None) == (state == READY)
    if view is not None:
        view.release()
    ring = NotifyRing(_REGION, 1024, GEOMETRY.notif_slots, 2, 3, 4)
    q[2], q[3], q[4] = words[2], words[3], words[4]
    for i in range(choice >> 6):
        ring.post(i, 1, words[5])
    got = ring.drain(words[6] % 8 + 1)
    assert len(got) <= GEOMETRY.notif_slots and all(q[w] <= U64 for w in (2, 3, 4))

"""Shared-memory queues: the MPSC command queue, the notification ring and the byte rings.

Memory-ordering argument (x86-64 only, which is what the guests and the host are):

* x86-64 is TSO: loads are not reordered with older loads, stores are not reordered with older stores,
  and stores are not reordered with older loads.  The only reordering is a store followed by a load of a
  different location (store buffer).  CPython performs each memoryview element access ('Q' format on an
  8-byte aligned address) as one 8-byte mov, and each access is a separate C call, so the compiler cannot
  reorder them either.  Hence single-producer rings need no atomics: the producer writes the payload, then
  stores the index (release by TSO); the consumer loads the index, then the payload (acquire by TSO).
* Multi-producer command queue (Vyukov bounded queue, used MPSC): producers claim a position with a CAS on
  the shared tail (`native.mpsc_push`, a locked cmpxchg = full barrier), write the 48-byte body, then
  store the slot sequence = pos + 1 with release.  The single consumer (the dispatcher) reads the slot
  sequence; if it equals pos + 1 the body is complete, it decodes it, then stores sequence = pos + nslots,
  handing the slot to the producer of the next lap.  No lock: a producer that stalls mid-write delays only
  the consumer of that one socket's queue; other producers keep claiming later slots.  Anything other than
  pos (empty) or pos + 1 (ready) in a slot means a hostile or broken producer: the socket is failed.
* The "sleep" handshakes (front-end about to block on its doorbell, dispatcher about to block in epoll,
  dispatcher about to stop draining a tx ring) are Dekker patterns: each side stores its flag and then
  loads the other side's state.  That store->load order is the one x86 breaks, so each of them goes through
  a locked RMW or `native.fence()` (mfence) between the store and the load.
* The one handshake on the per-send hot path is asymmetric: the front-end stores the tx tail and then
  loads the "dispatcher is draining" flag with a plain load; only when the flag looks clear does it xchg
  it (locked) and post SEND.  The dispatcher, when it stops draining, stores flag = 0, calls
  membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) (front-ends registered for it at attach), and then reloads
  the tail.  membarrier guarantees that every running thread of a registered process executed a full
  barrier between the syscall's entry and return.  So either the front-end's flag load came after its
  barrier point and sees 0 (then it takes the xchg path and posts), or its tail store came before that
  point and the dispatcher's reload sees it (then it re-takes the flag with a CAS and keeps draining).
  Without membarrier (the dispatcher says so at attach) the front-end always does the xchg.

Measured (python -m isoperf.stackbench --queues): on the host, MPSC push + pop 0.86 M/s with the extension
(0.62 M/s with ctypes), an atomic xchg 101 ns through the extension vs 459 ns through ctypes, a plain
memoryview store 74 ns; in a TCG guest a ctypes call costs ~14 us and a memoryview store ~1.2 us.  Hence:
plain ordered stores wherever a single writer owns a word, one C call per message at most.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from . import native
from .layout import BODY, ENTRY, ENTRY_SIZE, NOTIF_ENTRY, ring_spans

EMPTY, READY, CORRUPT = 0, 1, 2
U64 = (1 << 64) - 1


class Region:
    """An mmap of a shared memory fd with its base address (for the C helper) and a u64 view."""

    def __init__(self, fd: int, size: int):
        self.size = size
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.base = ctypes.addressof(self._anchor)
        self.buf = memoryview(self.mm)
        self.q = self.buf.cast("Q")

    def close(self) -> None:
        if self.mm.closed:
            return
        self.q.release()
        self.buf.release()
        del self._anchor
        self.mm.close()


def create_memfd(size: int, name: str = "isostack") -> int:
    """An anonymous shared memory file that can no longer shrink (so a peer cannot SIGBUS the dispatcher)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


class CommandQueue:
    """One socket's MPSC command queue inside a Region (Vyukov bounded queue, 64-byte slots)."""

    def __init__(self, region: Region, tail_word: int, slots_off: int, nslots: int):
        self.region = region
        self.q = region.q
        self.buf = region.buf
        self.tail_addr = region.base + tail_word * 8
        self.tail_word = tail_word
        self.slots_off = slots_off
        self.slots_addr = region.base + slots_off
        self.nslots = nslots
        self.mask = nslots - 1
        self.head = 0  # consumer only

    def init(self) -> None:
        """Fresh queue: slot i has sequence i (creator only, before any producer)."""
        q, base = self.q, self.slots_off // 8
        for i in range(self.nslots):
            q[base + i * 8] = i
        q[self.tail_word] = 0
        self.head = 0

    # producer side ---------------------------------------------------------------------------------
    def push_body(self, body: bytes) -> int:
        """Post a 48-byte body; returns its position, -1 when full, -2 when the queue is corrupt."""
        return native.mpsc_push(self.tail_addr, self.slots_addr, self.nslots, body)

    def push(self, op: int, sock: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"", flags: int = 0) -> int:
        return native.mpsc_push(self.tail_addr, self.slots_addr, self.nslots, BODY.pack(op, flags, sock, a, b, c, ip))

    # consumer side ---------------------------------------------------------------------------------
    def poll(self) -> tuple[int, memoryview | None]:
        """(EMPTY|READY|CORRUPT, entry view) for the slot at head; does not consume."""
        pos = self.head
        word = (self.slots_off + (pos & self.mask) * ENTRY_SIZE) // 8
        seq = self.q[word]
        if seq == pos + 1:
            off = word * 8
            return READY, self.buf[off : off + ENTRY_SIZE]
        if seq == pos:
            return EMPTY, None
        return CORRUPT, None

    def release(self) -> None:
        """Consume the slot at head: hand it to the producer of the next lap."""
        pos = self.head
        self.q[(self.slots_off + (pos & self.mask) * ENTRY_SIZE) // 8] = pos + self.nslots
        self.head = pos + 1

    def pop_raw(self) -> bytes | None:
        """Copy out and consume the ready entry at head (tests and simple consumers)."""
        state, view = self.poll()
        if state != READY:
            return None
        data = bytes(view)
        self.release()
        return data


def unpack_entry(raw) -> tuple:
    return ENTRY.unpack(raw)


class NotifyRing:
    """SPSC ring of 16-byte notifications (dispatcher -> application); plain ordered stores suffice."""

    def __init__(self, region: Region, off: int, nslots: int, head_word: int, tail_word: int, dropped_word: int):
        self.region = region
        self.buf = region.buf
        self.q = region.q
        self.off = off
        self.nslots = nslots
        self.mask = nslots - 1
        self.head_word = head_word
        self.tail_word = tail_word
        self.dropped_word = dropped_word

    def post(self, sock: int, events: int, seq: int) -> bool:
        """Producer: append one entry; when full, count a drop (the consumer then rescans every socket)."""
        q = self.q
        tail = q[self.tail_word]  # every index and counter here is in the application's memory: they wrap
        if tail - q[self.head_word] >= self.nslots:
            q[self.dropped_word] = (q[self.dropped_word] + 1) & U64
            return False
        NOTIF_ENTRY.pack_into(self.buf, self.off + (tail & self.mask) * 16, sock, events, seq & U64)
        q[self.tail_word] = (tail + 1) & U64
        return True

    def drain(self, limit: int = 1 << 30) -> list[tuple[int, int, int]]:
        """Consumer: take every available entry (a hint: the authoritative state is in the control pages)."""
        q = self.q
        head, tail = q[self.head_word], q[self.tail_word]
        n = min(tail - head, self.nslots, limit)
        out = []
        for i in range(n):
            out.append(NOTIF_ENTRY.unpack_from(self.buf, self.off + ((head + i) & self.mask) * 16))
        q[self.head_word] = head + n
        return out


def ring_write(buf: memoryview, ring_off: int, size: int, index: int, data) -> None:
    """Copy `data` into a byte ring at free-running `index` (caller checked credits)."""
    pos = 0
    for off, length in ring_spans(index, len(data), size):
        buf[ring_off + off : ring_off + off + length] = data[pos : pos + length]
        pos += length


def ring_views(buf: memoryview, ring_off: int, size: int, index: int, length: int) -> list[memoryview]:
    """Memoryviews (one or two, for the wrap) of `length` bytes at `index`: handed to sendmsg/recvmsg_into."""
    return [buf[ring_off + off : ring_off + off + n] for off, n in ring_spans(index, length, size)]


def ring_read(buf: memoryview, ring_off: int, size: int, index: int, length: int) -> bytes:
    views = ring_views(buf, ring_off, size, index, length)
    if len(views) == 1:
        return bytes(views[0])
    return b"".join(views)

"""Split virtqueue: per-ring state (as libvhost-user's VuVirtq) and a checked walk avail -> chain -> used.

Knows nothing about networking (Snabb's virtq_device vs net_device split). Every index, address, length,
chain length and indirect table from the guest is checked; a violation raises RingError and the caller
stops the ring.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from .eventfds import eventfd_signal
from .memory import AddressError, GuestMemory
from .protocol import VringAddr

try:  # optional: big descriptor batches translated with structured views, faster than the per-descriptor loop
    import numpy as _np

    DESC_DTYPE = _np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
except ImportError:  # pragma: no cover - depends on the environment
    _np = None
#: batches at least this big go through numpy (below, its fixed cost is more than the loop)
NP_BATCH = 16

DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

MAX_RING_SIZE = 32768
#: Upper bound on an indirect table (Linux uses at most MAX_SKB_FRAGS + 2 entries for net).
MAX_INDIRECT = 1024


_fence_lock = threading.Lock()


def memory_fence() -> None:
    """A full barrier: acquiring a lock is a locked read-modify-write, which x86 never reorders loads across.

    Needed where we store an index and then load the guest's (used idx -> used_event / flags, avail_event ->
    avail idx): x86 may otherwise let the load pass the store, and both sides then skip the notification.
    """
    _fence_lock.acquire()
    _fence_lock.release()


class RingError(Exception):
    """The guest broke the ring's rules; the ring must stop."""


@dataclass(slots=True)
class Segment:
    view: memoryview
    writable: bool


class RingView(NamedTuple):
    """A mapped ring as the native datapath takes it; a snapshot: the caller stores back the indices it returns."""

    desc: memoryview
    avail: memoryview  # as u16
    used: memoryview  # as u16
    num: int
    last_avail_idx: int
    used_idx: int
    event_idx: bool
    indirect: bool


class RxBuffer(NamedTuple):
    """peek_rx_buffer(): heads the guest made available, the next head (-1: none), its view (None when it is
    chained or indirect: walk it with chain()/gather())."""

    available: int
    head: int
    view: memoryview | None


class Gathered(NamedTuple):
    """gather(): the chains taken, as (head, views), and the bytes they hold."""

    chains: list[tuple[int, list[memoryview]]]
    capacity: int


@dataclass(slots=True)
class QueueCounters:
    frames: int = 0
    bytes: int = 0
    kicks: int = 0
    calls: int = 0
    calls_skipped: int = 0  # the call eventfd was not writable (its peer filled it): skipped, never blocked on


@dataclass(eq=False)
class Vring:
    """One virtqueue: configuration from vhost-user messages plus the ring walking state."""

    index: int
    num: int = 0
    addr: VringAddr | None = None
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    started: bool = False
    error: str | None = None
    event_idx: bool = False
    indirect: bool = False
    last_avail_idx: int = 0
    used_idx: int = 0
    signalled_used: int = 0
    signalled_used_valid: bool = False
    counters: QueueCounters = field(default_factory=QueueCounters)
    _desc: memoryview | None = None
    _avail: memoryview | None = None  # as u16 (flags, idx, ring[num], used_event)
    _used: memoryview | None = None  # as u16 (flags, idx, ..., avail_event at 2 + 4*num)
    _used32: memoryview | None = None  # as u32 (flags|idx, then id, len pairs)
    _desc_np: object = None  # numpy structured view of the descriptor table (when numpy is there)

    # ---- configuration -------------------------------------------------------------------------------------

    def set_num(self, num: int) -> None:
        if num == 0 or num > MAX_RING_SIZE or num & (num - 1):
            raise RingError(f"ring size {num} is not a power of two in 1..{MAX_RING_SIZE}")
        self.num = num

    def map(self, mem: GuestMemory) -> None:
        """Translate the ring addresses (front-end virtual) into views of guest memory."""
        if self.addr is None or self.num == 0:
            return
        self.unmap()
        n = self.num
        if self.addr.avail_user_addr % 2 or self.addr.used_user_addr % 4 or self.addr.desc_user_addr % 16:
            raise RingError(f"ring {self.index}: ring addresses are not aligned")
        try:
            self._desc = mem.uva(self.addr.desc_user_addr, 16 * n)
            if _np is not None:
                self._desc_np = _np.frombuffer(self._desc, dtype=DESC_DTYPE)
            # Typed views: an index is then loaded and stored as one 16-bit access. struct packs byte by
            # byte, and a torn used idx (0x00ff -> 0x0000 -> 0x0100) makes a driver reclaim buffers twice.
            self._avail = mem.uva(self.addr.avail_user_addr, 6 + 2 * n).cast("H")
            used = mem.uva(self.addr.used_user_addr, 6 + 8 * n)
            self._used = used.cast("H")
            self._used32 = used[: 4 + 8 * n].cast("I")
        except AddressError as e:
            self.unmap()
            raise RingError(f"ring {self.index}: {e}") from e

    def unmap(self) -> None:
        self._desc_np = None  # first: it holds an export of the view released below
        for v in (self._desc, self._avail, self._used, self._used32):
            if v is not None:
                v.release()
        self._desc = self._avail = self._used = self._used32 = None

    def view(self) -> RingView:
        """The ring for the native datapath (mapped rings only)."""
        return RingView(self._desc, self._avail, self._used, self.num, self.last_avail_idx, self.used_idx,
                        self.event_idx, self.indirect)

    @property
    def mapped(self) -> bool:
        return self._desc is not None

    @property
    def ready(self) -> bool:
        """Walkable: started (kick received), enabled, mapped and not stopped by an error."""
        return self.started and self.enabled and self.error is None and self._desc is not None

    def stop(self, reason: str) -> None:
        """Stop the ring because the guest misbehaved (kept until the front-end reconfigures it)."""
        self.error = reason

    def close_fds(self) -> None:
        for name in ("kick_fd", "call_fd", "err_fd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)

    def reset(self) -> None:
        """Back to the state of a new ring (the front-end went away); counters are the port's and stay."""
        self.close_fds()
        self.unmap()
        fresh = Vring(self.index, counters=self.counters)
        for name in ("num", "addr", "enabled", "started", "error", "event_idx", "indirect", "last_avail_idx",
                     "used_idx", "signalled_used", "signalled_used_valid"):
            setattr(self, name, getattr(fresh, name))

    def sync_used_idx(self) -> None:
        """Take the used index from the ring itself, and resume from it (as libvhost-user does)."""
        assert self._used is not None
        self.used_idx = self._used[1]
        if self.last_avail_idx != self.used_idx:
            self.last_avail_idx = self.used_idx
        self.signalled_used_valid = False

    # ---- walking -------------------------------------------------------------------------------------------

    def avail_idx(self) -> int:
        return self._avail[1]

    def pending(self, fence: bool = False) -> int:
        """How many heads the guest has made available; a jump larger than the ring is a guest bug.

        fence=True after writing avail_event, so the re-check cannot miss an entry added meanwhile.
        """
        if fence:
            memory_fence()
        n = (self.avail_idx() - self.last_avail_idx) & 0xFFFF
        if n > self.num:
            raise RingError(f"avail idx moved {n} entries past last_avail {self.last_avail_idx}; "
                            f"ring has {self.num}")
        return n

    def head_at(self, offset: int) -> int:
        """The descriptor index at avail position last_avail_idx + offset (not consumed)."""
        slot = (self.last_avail_idx + offset) % self.num
        head = self._avail[2 + slot]
        if head >= self.num:
            raise RingError(f"avail ring slot {slot} names descriptor {head}, ring has {self.num}")
        return head

    def heads(self, count: int, offset: int = 0) -> list[int]:
        """`count` descriptor indices from avail position last_avail_idx + offset, in one read (not consumed)."""
        start = (self.last_avail_idx + offset) & (self.num - 1)
        end = start + count
        avail = self._avail
        if end <= self.num:
            heads = avail[2 + start:2 + end].tolist()
        else:
            heads = avail[2 + start:2 + self.num].tolist() + avail[2:2 + end - self.num].tolist()
        if len(heads) != count:  # the view is shorter than the ring: never hand back fewer heads than asked
            raise RingError(f"avail ring view holds {len(avail) - 3} entries, ring has {self.num}")
        if heads and max(heads) >= self.num:
            bad = next(h for h in heads if h >= self.num)
            raise RingError(f"avail ring names descriptor {bad}, ring has {self.num}")
        return heads

    def single_buffer(self, head: int, mem: GuestMemory) -> tuple[memoryview, int] | None:
        """Fast path for the common layout: (view, flags) of a head descriptor that is neither chained nor
        indirect, bounds-checked; None when chain() must walk it. `head` must be < num (heads/head_at)."""
        addr, length, flags, _nxt = DESC.unpack_from(self._desc, head << 4)
        if flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT):
            return None
        try:
            return mem.gpa(addr, length), flags
        except AddressError as e:
            raise RingError(f"descriptor {head}: {e}") from e

    def single_buffer_views(self, heads: list[int], mem: GuestMemory, writable: bool = False
                            ) -> list[memoryview | None]:
        """single_buffer() for a batch of heads (< num): for each, its view, or None when it is chained or indirect
        (walk it with chain()). A single buffer of the wrong direction (device-writable on tx, read-only on rx:
        `writable`) raises RingError."""
        want = VRING_DESC_F_WRITE if writable else 0
        if self._desc_np is not None and len(heads) >= NP_BATCH:
            fast = self._single_buffer_views_np(heads, mem, want)
            if fast is not None:
                return fast
        desc = self._desc
        regions = mem.gpa_spans
        unpack = DESC.unpack_from
        out: list[memoryview | None] = []
        append = out.append
        for head in heads:
            addr, length, flags, _nxt = unpack(desc, head << 4)
            if flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT):
                append(None)
                continue
            if flags & VRING_DESC_F_WRITE != want:
                raise RingError(f"rx descriptor chain {head} has a device-read-only buffer" if writable else
                                f"tx descriptor chain {head} has a device-writable buffer")
            for base, size, view in regions:
                off = addr - base
                if 0 <= off and off + length <= size:
                    append(view[off:off + length])
                    break
            else:
                raise RingError(f"descriptor {head}: guest address {addr:#x}+{length} is outside the mapped memory")
        return out

    def _single_buffer_views_np(self, heads: list[int], mem: GuestMemory, want: int) -> list[memoryview] | None:
        """single_buffer_views for a batch with numpy: one fancy-indexed read of the descriptors, vectorised checks.

        None when anything is unusual (a chain, a wrong direction, an address outside every region): the
        caller then takes the per-descriptor loop, which finds and reports the exact problem.
        """
        np = _np
        d = self._desc_np[np.array(heads, dtype=np.intp)]
        flags = d["flags"]
        if ((flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE)) != want).any():
            return None
        addr = d["addr"]
        end = addr + d["len"]  # uint64; addr near 2**64 would wrap: the loop below re-checks such a batch
        regions = mem.gpa_spans
        if len(regions) == 1:
            base, size, view = regions[0]
            if (addr < base).any() or (end > base + size).any() or (end < addr).any():
                return None
            return [view[o:e] for o, e in zip((addr - base).tolist(), (end - base).tolist(), strict=True)]
        out: list = [None] * len(heads)
        placed = np.zeros(len(heads), dtype=bool)
        for base, size, view in regions:
            inside = (addr >= base) & (end <= base + size) & (end >= addr) & ~placed
            idx = np.nonzero(inside)[0]
            for i, o, e in zip(idx.tolist(), (addr[idx] - base).tolist(), (end[idx] - base).tolist(), strict=True):
                out[i] = view[o:e]
            placed |= inside
        if not placed.all():
            return None
        return out

    def peek_rx_buffer(self, mem: GuestMemory) -> RxBuffer:
        """The rx hot path in one call, with the checks of pending() + head_at(0) + single_buffer(); a
        device-read-only single buffer raises RingError."""
        n = (self._avail[1] - self.last_avail_idx) & 0xFFFF
        if n == 0:
            return RxBuffer(0, -1, None)
        num = self.num
        if n > num:
            raise RingError(f"avail idx moved {n} entries past last_avail {self.last_avail_idx}; ring has {num}")
        head = self._avail[2 + (self.last_avail_idx & (num - 1))]
        if head >= num:
            raise RingError(f"avail ring names descriptor {head}, ring has {num}")
        addr, length, flags, _nxt = DESC.unpack_from(self._desc, head << 4)
        if flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT):
            return RxBuffer(n, head, None)
        if not flags & VRING_DESC_F_WRITE:
            raise RingError(f"rx descriptor chain {head} has a device-read-only buffer")
        for base, size, view in mem.gpa_spans:
            off = addr - base
            if 0 <= off and off + length <= size:
                return RxBuffer(n, head, view[off:off + length])
        raise RingError(f"descriptor {head}: guest address {addr:#x}+{length} is outside the mapped memory")

    def gather(self, mem: GuestMemory, need: int, limit: int, mergeable: bool = False) -> Gathered:
        """Device-writable buffers from the avail ring (not consumed) until `need` bytes fit or `limit` chains
        are taken: ([(head, views)], capacity). Single descriptors (MRG_RXBUF buffers) take a fast inline path;
        with `mergeable` an empty one is a RingError (a ring of them made each frame scan the whole ring).
        """
        desc = self._desc
        regions = mem.gpa_spans
        unpack = DESC.unpack_from
        chains: list[tuple[int, list[memoryview]]] = []
        capacity = 0
        taken = 0
        while capacity < need and taken < limit:
            for head in self.heads(min(limit - taken, 64), taken):
                addr, length, flags, _nxt = unpack(desc, head << 4)
                if not flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT):
                    if not flags & VRING_DESC_F_WRITE:
                        raise RingError(f"rx descriptor chain {head} has a device-read-only buffer")
                    if not length and mergeable:
                        raise RingError(f"rx descriptor {head} is a zero-length buffer")
                    for base, size, view in regions:
                        off = addr - base
                        if 0 <= off and off + length <= size:
                            views = [view[off:off + length]]
                            break
                    else:
                        raise RingError(f"descriptor {head}: guest address {addr:#x}+{length} is outside the "
                                        "mapped memory")
                    capacity += length
                else:
                    views = []
                    for sg in self.chain(head, mem):
                        if not sg.writable:
                            raise RingError(f"rx descriptor chain {head} has a device-read-only buffer")
                        views.append(sg.view)
                        capacity += len(sg.view)
                chains.append((head, views))
                taken += 1
                if capacity >= need:
                    break
        return Gathered(chains, capacity)

    def consume(self, count: int) -> None:
        self.last_avail_idx = (self.last_avail_idx + count) & 0xFFFF

    def chain(self, head: int, mem: GuestMemory) -> list[Segment]:
        """Walk a descriptor chain (following one indirect table) into bounds-checked segments."""
        table = self._desc
        table_len = self.num
        idx = head
        count = 0
        in_indirect = False
        regions = mem.gpa_spans
        segs: list[Segment] = []
        while True:
            if idx >= table_len:
                raise RingError(f"descriptor index {idx} out of range {table_len} (chain from {head})")
            addr, length, flags, nxt = DESC.unpack_from(table, 16 * idx)
            if flags & VRING_DESC_F_INDIRECT:
                if not self.indirect:
                    raise RingError("indirect descriptor but INDIRECT_DESC was not negotiated")
                if in_indirect:
                    raise RingError("nested indirect descriptor")
                if flags & VRING_DESC_F_NEXT:
                    raise RingError("indirect descriptor with NEXT set")
                if length == 0 or length % 16 or length // 16 > MAX_INDIRECT:
                    raise RingError(f"indirect table length {length} invalid")
                try:
                    table = mem.gpa(addr, length)
                except AddressError as e:
                    raise RingError(f"indirect table: {e}") from e
                table_len = length // 16
                idx = 0
                count = 0
                in_indirect = True
                continue
            count += 1
            if count > table_len:
                raise RingError(f"descriptor chain from {head} longer than its table ({table_len}): loop?")
            for base, size, region in regions:  # mem.gpa, inlined
                off = addr - base
                if 0 <= off and off + length <= size:
                    view = region[off:off + length]
                    break
            else:
                raise RingError(f"descriptor {idx}: guest address {addr:#x}+{length} is outside the mapped memory")
            segs.append(Segment(view, bool(flags & VRING_DESC_F_WRITE)))
            if not flags & VRING_DESC_F_NEXT:
                return segs
            idx = nxt

    def put_used(self, head: int, length: int) -> None:
        """Add a used element (not yet visible to the guest: see publish_used)."""
        slot = self.used_idx % self.num
        self._used32[1 + 2 * slot] = head
        self._used32[2 + 2 * slot] = length
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def put_used_many(self, elems: list[tuple[int, int]]) -> None:
        """put_used for several (head, length) elements."""
        used_idx = self.used_idx
        mask = self.num - 1
        u32 = self._used32
        for head, length in elems:
            slot = 1 + 2 * (used_idx & mask)
            u32[slot] = head
            u32[slot + 1] = length
            used_idx += 1
        self.used_idx = used_idx & 0xFFFF

    def complete_one(self, head: int, length: int) -> None:
        """consume(1) + put_used + publish_used for one head, in one call (the rx hot path)."""
        used_idx = self.used_idx
        slot = used_idx & (self.num - 1)
        u32 = self._used32
        u32[1 + 2 * slot] = head
        u32[2 + 2 * slot] = length
        self.used_idx = used_idx = (used_idx + 1) & 0xFFFF
        self.last_avail_idx = last = (self.last_avail_idx + 1) & 0xFFFF
        u16 = self._used
        u16[1] = used_idx
        if self.event_idx:
            u16[2 + 4 * self.num] = last

    def publish_used(self) -> None:
        """Make used elements visible (x86 keeps stores in order, so the elements land before the index)."""
        self._used[1] = self.used_idx
        if self.event_idx:
            # Ask for a kick when anything past what we consumed becomes available.
            self._used[2 + 4 * self.num] = self.last_avail_idx

    def request_kicks(self) -> None:
        """Tell the guest (EVENT_IDX) which avail index should make it kick us next."""
        if self.event_idx and self._used is not None:
            self._used[2 + 4 * self.num] = self.last_avail_idx

    def need_call(self) -> bool:
        """Whether to signal the call eventfd now (EVENT_IDX used_event, else NO_INTERRUPT)."""
        memory_fence()  # our used idx store must be visible before we read what the guest asked for
        if self.event_idx:
            used_event = self._avail[2 + self.num]
            old, new = self.signalled_used, self.used_idx
            valid = self.signalled_used_valid
            self.signalled_used, self.signalled_used_valid = new, True
            if not valid:
                return True
            return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self._avail[0] & VRING_AVAIL_F_NO_INTERRUPT

    def call(self) -> bool:
        """Signal the guest if it wants it; returns whether the call eventfd was written."""
        if self.call_fd is None or not self.need_call():
            return False
        if not eventfd_signal(self.call_fd):
            self.counters.calls_skipped += 1
            return False
        self.counters.calls += 1
        return True

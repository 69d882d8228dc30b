"""Shared-memory queues: MPSC command queue (single-process, hypothesis interleavings, multi-process stress),
notification ring, byte rings."""

import os
import signal
import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from isostack import native
from isostack.layout import BODY, ENTRY, Geometry
from isostack.queues import CORRUPT, EMPTY, READY, CommandQueue, NotifyRing, Region, create_memfd, ring_read, ring_write


def make_region(g):
    fd = create_memfd(g.total_size)
    r = Region(fd, g.total_size)
    return fd, r


@pytest.fixture
def queue():
    g = Geometry(max_sockets=1, cmdq_slots=8, tx_size=4096, rx_size=4096, notif_slots=8)
    fd, r = make_region(g)
    q = CommandQueue(r, g.control_off(0) // 8, g.cmdq_off(0), g.cmdq_slots)
    q.init()
    yield q
    r.close()
    os.close(fd)


def body(n):
    return BODY.pack(1, 0, 0, n, 0, 0, b"")


def test_fifo_full_and_positions(queue):
    assert [queue.push_body(body(i)) for i in range(9)] == [0, 1, 2, 3, 4, 5, 6, 7, -1]
    for i in range(8):
        raw = queue.pop_raw()
        seq, pos, _op, _f, _s, a, *_ = ENTRY.unpack(raw)
        assert (seq, pos, a) == (i + 1, i, i)
    assert queue.pop_raw() is None
    assert queue.push_body(body(100)) == 8  # second lap
    assert ENTRY.unpack(queue.pop_raw())[5] == 100


def test_corrupt_slot_sequence_is_detected(queue):
    queue.push_body(body(1))
    queue.q[queue.slots_off // 8] = 12345  # hostile producer scribbles the slot sequence
    assert queue.poll()[0] == CORRUPT


def test_push_gives_up_on_a_corrupt_queue(queue):
    queue.q[queue.tail_word] = 3  # tail says 3, but slot 3 holds sequence 3 only for lap 0 ...
    queue.q[queue.slots_off // 8 + 3 * 8] = 1000  # ... and a scribbled sequence far ahead
    assert queue.push_body(body(0)) == -2


class Interleavings(RuleBasedStateMachine):
    """Producers may stall between claiming a slot (CAS on tail) and publishing it; the consumer must see
    entries exactly in claim order, never a half-written one, and never lose or duplicate one."""

    def __init__(self):
        super().__init__()
        self.g = Geometry(max_sockets=1, cmdq_slots=4, tx_size=4096, rx_size=4096, notif_slots=8)
        self.fd, self.r = make_region(self.g)
        self.q = CommandQueue(self.r, self.g.control_off(0) // 8, self.g.cmdq_off(0), 4)
        self.q.init()
        self.claimed = {}  # pos -> value, claimed but not published
        self.published = {}
        self.next_value = 0
        self.consumed = 0

    def teardown(self):
        self.r.close()
        os.close(self.fd)

    def _value(self):
        self.next_value += 1
        return self.next_value

    @rule()
    def push(self):
        v = self._value()
        pos = self.q.push_body(body(v))
        tail_before = self.consumed + len(self.claimed) + len(self.published)
        if pos == -1:
            assert tail_before - self.consumed >= 4  # full only when 4 positions are unconsumed
        else:
            assert pos == tail_before
            self.published[pos] = v

    @rule()
    def claim(self):
        """Do the first half of a push by hand: CAS the tail, do not publish yet."""
        tail = self.q.q[self.q.tail_word]
        seq = self.q.q[self.q.slots_off // 8 + (tail & 3) * 8]
        if seq != tail:
            return  # full
        assert native.cas64(self.q.tail_addr, tail, tail + 1)
        self.claimed[tail] = self._value()

    @precondition(lambda self: self.claimed)
    @rule(data=st.data())
    def publish(self, data):
        pos = data.draw(st.sampled_from(sorted(self.claimed)))
        v = self.claimed.pop(pos)
        off = self.q.slots_off + (pos & 3) * 64
        self.r.buf[off + 16 : off + 64] = body(v)
        self.q.q[off // 8 + 1] = pos
        self.q.q[off // 8] = pos + 1
        self.published[pos] = v

    @rule()
    def pop(self):
        state, view = self.q.poll()
        if view is not None:
            view.release()
        if self.consumed in self.published:
            assert state == READY
            raw = self.q.pop_raw()
            assert ENTRY.unpack(raw)[5] == self.published.pop(self.consumed)
            self.consumed += 1
        else:
            assert state == EMPTY

    @invariant()
    def tail_counts_everything(self):
        assert self.q.q[self.q.tail_word] == self.consumed + len(self.claimed) + len(self.published)


TestInterleavings = Interleavings.TestCase
TestInterleavings.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_multiprocess_producers_one_consumer():
    """4 forked producer processes x 20000 entries through a 64-slot queue: none lost, none duplicated,
    each producer's entries in its own order."""
    producers, per = 4, 20000
    g = Geometry(max_sockets=1, cmdq_slots=64, tx_size=4096, rx_size=4096, notif_slots=8)
    fd, r = make_region(g)
    q = CommandQueue(r, g.control_off(0) // 8, g.cmdq_off(0), g.cmdq_slots)
    q.init()
    pids = []
    for p in range(producers):
        pid = os.fork()
        if pid == 0:  # child: map the inherited memfd on its own
            code = 1
            try:
                cr = Region(fd, g.total_size)
                cq = CommandQueue(cr, g.control_off(0) // 8, g.cmdq_off(0), g.cmdq_slots)
                for i in range(per):
                    b = BODY.pack(1, 0, p, i, 0, 0, b"")
                    while cq.push_body(b) == -1:
                        os.sched_yield()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    try:
        last = [-1] * producers
        n = 0
        spins = 0
        while n < producers * per:
            raw = q.pop_raw()
            if raw is None:
                spins += 1
                assert spins < 50_000_000, "consumer starved"
                continue
            _seq, pos, _op, _f, p, i, *_ = ENTRY.unpack(raw)
            assert pos == n
            assert i == last[p] + 1, f"producer {p}: {i} after {last[p]}"
            last[p] = i
            n += 1
        assert last == [per - 1] * producers
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        pids.clear()
        assert q.pop_raw() is None
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        r.close()
        os.close(fd)


def test_notify_ring_fifo_and_drop_when_full():
    g = Geometry(max_sockets=1, notif_slots=4, tx_size=4096, rx_size=4096)
    fd, r = make_region(g)
    try:
        n = NotifyRing(r, g.notif_off, 4, 32, 24, 27)
        assert all(n.post(i, 1, i) for i in range(4))
        assert not n.post(9, 1, 9)
        assert r.q[27] == 1
        assert [e[0] for e in n.drain()] == [0, 1, 2, 3]
        assert n.post(5, 2, 0) and n.drain() == [(5, 2, 0)]
    finally:
        r.close()
        os.close(fd)


def test_byte_ring_wraps():
    buf = memoryview(bytearray(32))
    ring_write(buf, 16, 16, 12, b"abcdefgh")  # 4 bytes at the end, 4 at the start
    assert bytes(buf[16:32]) == b"efgh" + bytes(8) + b"abcd"
    assert ring_read(buf, 16, 16, 12, 8) == b"abcdefgh"


def test_memfd_cannot_shrink():
    fd = create_memfd(8192)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 4096)
    finally:
        os.close(fd)


def test_native_atomics():
    import ctypes

    cell = (ctypes.c_uint64 * 1)()
    a = ctypes.addressof(cell)
    assert native.cas64(a, 0, 5) == 1 and native.cas64(a, 0, 6) == 0 and cell[0] == 5
    assert native.xchg64(a, 7) == 5 and native.fetch_add64(a, 2) == 7 and native.fetch_or64(a, 16) == 9
    assert cell[0] == 25 and struct.calcsize("Q") == 8

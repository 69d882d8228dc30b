"""isostackd's C hot path (_dispatch.c) against its Python reference (dispatcher/ringio.py).

Each case runs the same step on two identical regions, one through C and one through Python, each with its own
kernel socket pair fed the same bytes, and compares what they return, the whole regions afterwards (so the C
step wrote nothing the Python one did not, hostile indices included) and what the peers received. Then the
data path itself: an impossible index fails that socket with the same error whichever path runs.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from isostack import native
from isostack.dispatcher import datapath, ringio
from isostack.layout import C_RX_HEAD, C_RX_TAIL, C_STATE, C_TX_HEAD, C_TX_TAIL, R_DROPPED, ST_ERROR, Geometry
from isostack.queues import NotifyRing, Region, create_memfd

C = native.load_dispatch()
pytestmark = pytest.mark.skipif(C is None, reason="the _dispatch extension is not built here (`make native`)")

GEO = Geometry(max_sockets=1, cmdq_slots=4, tx_size=4096, rx_size=4096, notif_slots=4, notif_rings=1)
SIZE = 4096
U64 = (1 << 64) - 1


class Side:
    """One region and one connected pair of kernel sockets: `mine` is the dispatcher's (non-blocking)."""

    def __init__(self):
        fd = create_memfd(GEO.total_size)
        self.region = Region(fd, GEO.total_size)
        os.close(fd)
        self.mine, self.peer = socket.socketpair()
        self.mine.setblocking(False)
        self.peer.setblocking(False)
        self.control = GEO.control_off(0) // 8

    def close(self):
        self.mine.close()
        self.peer.close()
        self.region.close()

    def word(self, w: int, value: int | None = None) -> int:
        if value is not None:
            self.region.q[self.control + w] = value
        return self.region.q[self.control + w]

    def put_tx(self, head: int, data: bytes) -> None:
        """As a front-end: `data` in the tx ring at `head`, the tail after it."""
        for i, b in enumerate(data):
            self.region.buf[GEO.tx_off(0) + (head + i) % SIZE] = b
        self.word(C_TX_TAIL, head + len(data))

    def drain(self, native_path: bool, head: int) -> tuple[int, int]:
        if native_path:
            return C.tx_drain(self.mine.fileno(), self.region.base + self.control * 8,
                              self.region.base + GEO.tx_off(0), SIZE, head)
        return ringio.tx_drain(self.mine, self.region.q, self.region.buf, self.control, GEO.tx_off(0), SIZE, head)

    def fill(self, native_path: bool, tail: int) -> tuple[int, int]:
        if native_path:
            return C.rx_fill(self.mine.fileno(), self.region.base + self.control * 8,
                             self.region.base + GEO.rx_off(0), SIZE, tail)
        return ringio.rx_fill(self.mine, self.region.q, self.region.buf, self.control, GEO.rx_off(0), SIZE, tail)

    def peer_bytes(self) -> bytes:
        try:
            return self.peer.recv(1 << 16)
        except BlockingIOError:
            return b""


@pytest.fixture
def pair():
    """(C side, Python side)"""
    sides = Side(), Side()
    yield sides
    for side in sides:
        side.close()


def both(pair, step) -> tuple:
    """step(side, native_path) on both sides: their results, which must be equal, as must the regions."""
    c, py = step(pair[0], True), step(pair[1], False)
    assert c == py
    assert pair[0].region.buf.tobytes() == pair[1].region.buf.tobytes()
    return c


# ---------------------------------------------------------------- tx drain

@pytest.mark.parametrize("head, length", [(0, 64), (100, 1000), (SIZE - 10, 50), (SIZE * 7 + 4000, SIZE),
                                          ((1 << 63) - 5, 64)], ids=["start", "middle", "wrap", "full-ring", "high"])
def test_tx_drain_sends_what_the_ring_holds_and_publishes_the_head(pair, head, length):
    data = bytes((i * 7) % 251 for i in range(length))
    for side in pair:
        side.put_tx(head, data)
    assert both(pair, lambda s, n: s.drain(n, head)) == (length, length)
    for side in pair:
        assert side.word(C_TX_HEAD) == head + length
        got = b""
        while len(got) < length:
            got += side.peer_bytes()
        assert got == data


def test_tx_drain_of_an_empty_ring_makes_no_call(pair):
    for side in pair:
        side.put_tx(500, b"")
        side.word(C_TX_HEAD, 123)  # untouched: no send was made
    assert both(pair, lambda s, n: s.drain(n, 500)) == (0, 0)
    assert [s.word(C_TX_HEAD) for s in pair] == [123, 123]
    assert [s.peer_bytes() for s in pair] == [b"", b""]


@pytest.mark.parametrize("tail", [999, 1000 + SIZE + 1, U64, 0], ids=["behind", "past-size", "max", "zero"])
def test_tx_drain_refuses_an_impossible_tail_and_touches_nothing(pair, tail):
    for side in pair:
        side.word(C_TX_TAIL, tail)
        side.word(C_TX_HEAD, 1000)
    assert both(pair, lambda s, n: s.drain(n, 1000)) == (-1, tail)
    assert [s.word(C_TX_HEAD) for s in pair] == [1000, 1000]
    assert [s.peer_bytes() for s in pair] == [b"", b""]


def test_tx_drain_when_the_kernel_is_full_sends_part_then_nothing(pair):
    for side in pair:
        side.mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    head = 0
    for _ in range(100):  # the peer reads nothing: the kernel's buffers fill up
        for side in pair:
            side.put_tx(head, b"x" * SIZE)
        used, sent = both(pair, lambda s, n, head=head: s.drain(n, head))
        assert used == SIZE
        if sent == 0:
            break
        head += sent
        for side in pair:
            side.word(C_TX_TAIL, head)  # keep what was not sent out of the next round
    else:
        pytest.fail("the kernel never refused")
    assert [s.word(C_TX_HEAD) for s in pair] == [head, head]


def test_tx_drain_error_is_minus_errno(pair):
    for side in pair:
        side.peer.close()
        side.put_tx(0, b"y" * 64)
    used, sent = both(pair, lambda s, n: s.drain(n, 0))
    assert used == 64 and sent == -errno.EPIPE


# ---------------------------------------------------------------- rx fill

@pytest.mark.parametrize("tail, length", [(0, 64), (SIZE - 10, 50), (3 * SIZE + 100, SIZE)],
                         ids=["start", "wrap", "whole-ring"])
def test_rx_fill_receives_into_the_free_space_and_publishes_the_tail(pair, tail, length):
    data = bytes((i * 13) % 253 for i in range(length))
    for side in pair:
        side.word(C_RX_HEAD, tail)
        side.peer.sendall(data)
    assert both(pair, lambda s, n: s.fill(n, tail)) == (0, length)
    for side in pair:
        assert side.word(C_RX_TAIL) == tail + length


def test_rx_fill_of_a_full_ring_makes_no_call(pair):
    for side in pair:
        side.word(C_RX_HEAD, 100)
        side.peer.sendall(b"waits in the kernel")
    assert both(pair, lambda s, n: s.fill(n, 100 + SIZE)) == (SIZE, 0)
    assert both(pair, lambda s, n: s.fill(n, 100)) == (0, len(b"waits in the kernel"))


def test_rx_fill_with_nothing_there_and_at_eof(pair):
    assert both(pair, lambda s, n: s.fill(n, 0)) == (0, -errno.EAGAIN)
    for side in pair:
        side.peer.shutdown(socket.SHUT_WR)
    assert both(pair, lambda s, n: s.fill(n, 0)) == (0, 0)


@pytest.mark.parametrize("head", [10001, 9999 - SIZE, U64], ids=["ahead", "past-size", "max"])
def test_rx_fill_refuses_an_impossible_head_and_touches_nothing(pair, head):
    for side in pair:
        side.word(C_RX_HEAD, head)
        side.word(C_RX_TAIL, 10000)
        side.peer.sendall(b"not taken")
    assert both(pair, lambda s, n: s.fill(n, 10000)) == (-1, head)
    assert [s.word(C_RX_TAIL) for s in pair] == [10000, 10000]
    assert [s.mine.recv(100) for s in pair] == [b"not taken"] * 2  # left in the kernel


# ---------------------------------------------------------------- notification post

def _rings(pair):
    w = GEO.ring_word(0)
    out = []
    for side in pair:
        ring = NotifyRing(side.region, GEO.ring_off(0), GEO.notif_slots, w, w + 8, w + R_DROPPED)
        out.append((side, ring, side.region.base + w * 8, side.region.base + GEO.ring_off(0)))
    return out


def _post(entry, native_path, sock, events, seq):
    side, ring, header, entries = entry
    if native_path:
        return C.notify(header, entries, GEO.notif_slots, sock, events, seq)
    return ringio.notify(ring, sock, events, seq)


@pytest.mark.parametrize("head, tail", [(0, 0), (0, 3), (0, 4), (10, 2), (U64 - 1, U64), (5, U64)],
                         ids=["empty", "one-left", "full", "head-past-tail", "wrapping", "tail-max"])
def test_notify_posts_or_counts_a_drop_as_the_python_ring_does(pair, head, tail):
    rings = _rings(pair)
    for side, ring, _, _ in rings:
        side.region.q[ring.head_word] = head
        side.region.q[ring.tail_word] = tail
    for k in range(6):  # past full
        posted = both(pair, lambda s, n, k=k: _post(rings[0 if n else 1], n, 3, 1 << k, (1 << 64) - 1 - k))
        assert posted in (True, False)


# ---------------------------------------------------------------- the data path fails a socket alike

@pytest.fixture(params=["c", "python"])
def path(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(datapath, "NATIVE", None)
    return request.param


@pytest.mark.parametrize("what", ["tx", "rx"])
def test_an_impossible_index_fails_that_socket_with_efault(hand_driven, path, what):
    d, s, peer = hand_driven.dispatcher, hand_driven.sock, hand_driven.peer
    words, control = s._words, s._control_word
    if what == "tx":
        s.sendall(b"a" * 64)
        d.poll_once()
        assert peer.recv(64) == b"a" * 64
        words[control + C_TX_TAIL] = words[control + C_TX_HEAD] + 10 * GEO.tx_size  # past any ring
    else:
        words[control + C_RX_HEAD] = words[control + C_RX_TAIL] + 1  # ahead of what was received
        peer.sendall(b"b" * 64)
    for _ in range(20):
        d.poll_once()
        if words[control + C_STATE] & ST_ERROR:
            break
    assert words[control + C_STATE] & ST_ERROR
    with pytest.raises(OSError) as e:
        s.recv(10)
    assert e.value.errno == errno.EFAULT
    assert d.stats["apps_failed"] == 0  # the socket, not the application


def test_the_data_path_moves_the_same_bytes_on_both_paths(hand_driven, path):
    d, s, peer = hand_driven.dispatcher, hand_driven.sock, hand_driven.peer
    for i in range(50):  # both rings wrap (4096 bytes each)
        msg = bytes([i]) * 200
        s.sendall(msg)
        d.poll_once()
        got = b""
        while len(got) < 200:
            got += peer.recv(200 - len(got))
        assert got == msg
        peer.sendall(msg[::-1] + b"!")
        d.poll_once()
        assert s.recv(1000) == msg[::-1] + b"!"
    assert (datapath.NATIVE is not None) == (path == "c")

"""isostack/frontend/rx.py: the receive path (timeouts, non-blocking, recv_into across the ring's wrap, with and
without the C fast path), through a real isostackd subprocess against kernel TCP peers on 127.0.0.1."""

import os
import time

import pytest
from test_isostack_frontend import accept_in_thread, stack  # noqa: F401  (fixture)


def test_recv_timeout_and_nonblocking(stack, listener):  # noqa: F811
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    s.settimeout(0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        s.recv(10)
    assert 0.15 < time.monotonic() - t0 < 2
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.recv(10)
    box["c"].sendall(b"x")
    s.settimeout(5)
    assert s.recv(10) == b"x"
    s.close()
    box["c"].close()


@pytest.mark.parametrize("fast", [True, False])
def test_recv_into_copies_from_the_ring_across_the_wrap(stack, listener, monkeypatch, fast):  # noqa: F811
    """recv_into fills the caller's buffer straight from the rx ring (C fast path or memoryview slices), also
    when the data wraps around the ring's end, honours nbytes, offsets into a memoryview, EOF and misuse."""
    from isostack.frontend import IsoSocket, rx
    from isostack.layout import C_RX_TAIL

    if not fast:
        monkeypatch.setattr(rx, "C_RECV_INTO", None)
    monkeypatch.setattr(IsoSocket, "recv", lambda *a, **k: pytest.fail("recv_into went through recv"))
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    peer = box["c"]

    def buffered(n):  # wait until the dispatcher put n unread bytes into the rx ring
        deadline = time.monotonic() + 5
        while s._words[s._control_word + C_RX_TAIL] - s._rx_head < n:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    size = 1 << 16
    first, second = os.urandom(size - 1000), os.urandom(9000)
    peer.sendall(first)
    buffered(len(first))
    buf = bytearray(7000)
    got = bytearray()
    while len(got) < len(first):
        n = s.recv_into(buf, 5000 if len(got) % 2 else 0)  # nbytes 0: the whole buffer
        assert 0 < n <= (5000 if len(got) % 2 else 7000)
        got += buf[:n]
    assert got == first
    peer.sendall(second)
    buffered(len(second))
    assert s.recv_into(buf) == 7000  # ring positions size-1000 .. size+6000: the copy wraps
    assert buf == second[:7000]
    view = memoryview(bytearray(10))
    assert s.recv_into(view[4:], 6) == 6
    assert bytes(view) == b"\0" * 4 + second[7000:7006]
    with pytest.raises(ValueError):
        s.recv_into(bytearray(4), 5)
    with pytest.raises(TypeError):
        s.recv_into(b"read-only")
    rest = bytearray(5000)
    assert s.recv_into(rest) == 9000 - 7006
    peer.close()
    assert s.recv_into(bytearray(10)) == 0  # EOF
    s.close()

"""isostack/frontend/readiness.py: the per-socket readiness fd for event loops (selectors, asyncio's add_reader),
non-blocking connect and getsockopt(SO_ERROR), hostile readiness registrations on the attach connection.  Through a
real isostackd subprocess against kernel TCP peers on 127.0.0.1."""

import asyncio
import errno
import json
import os
import selectors
import socket
import time

import pytest

from isostack.frontend import Stack
from isostack.layout import Geometry

GEO = Geometry(max_sockets=16, tx_size=4096, rx_size=4096)


@pytest.fixture
def stack(isostackd):  # noqa: F811
    s = Stack(isostackd, GEO)
    yield s
    s.close()



def readable(sock, timeout):
    with selectors.DefaultSelector() as sel:
        sel.register(sock.fileno(), selectors.EVENT_READ)
        return bool(sel.select(timeout))


def test_nonblocking_connect_then_readiness_and_so_error(stack, listener):
    s = stack.socket()
    s.setblocking(False)
    fd = s.fileno()
    with pytest.raises(BlockingIOError) as e:
        s.connect(listener.getsockname())
    assert e.value.errno == errno.EINPROGRESS
    assert readable(s, 5)
    assert s.fileno() == fd
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    peer, _ = listener.accept()
    s.setblocking(True)
    s.sendall(b"hello")
    assert peer.recv(5) == b"hello"
    assert s.connect_ex(listener.getsockname()) == errno.EISCONN
    peer.close()
    s.close()


def test_nonblocking_connect_refused(stack):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    addr = port.getsockname()
    port.close()  # nothing listens there
    s = stack.socket()
    s.setblocking(False)
    assert s.connect_ex(addr) == errno.EINPROGRESS
    assert readable(s, 5)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    s.close()


def test_connect_in_progress_is_ealready_and_not_readable():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    first = socket.create_connection(srv.getsockname())  # fills the accept queue: further SYNs are dropped
    with Stack(os.environ["ISOSTACK_TEST_PATH"], GEO) as st:
        s = st.socket()
        s.setblocking(False)
        assert s.connect_ex(srv.getsockname()) == errno.EINPROGRESS
        assert not readable(s, 0.3)
        assert s.connect_ex(srv.getsockname()) == errno.EALREADY
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # still in progress
        a, _ = srv.accept()  # room again: the retransmitted SYN gets through (~1 s)
        assert readable(s, 5)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        s.close()
        a.close()
    first.close()
    srv.close()


@pytest.fixture(autouse=True)
def _path(isostackd, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ISOSTACK_TEST_PATH", isostackd)


def test_getsockopt(stack, listener):
    s = stack.create_connection(listener.getsockname(), timeout=5)
    peer, _ = listener.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536  # the kernel doubles it, as usual
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4) == (2 * 65536).to_bytes(4, "little")
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) > 0
    with pytest.raises(OSError) as e:
        s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE)
    assert e.value.errno == errno.ENOPROTOOPT
    s.sendall(b"still fine")  # asking for a forbidden option did not hurt the socket
    assert peer.recv(10) == b"still fine"
    peer.close()
    s.close()


def test_fileno_readable_on_data_and_cleared_by_would_block(stack, listener):
    s = stack.create_connection(listener.getsockname(), timeout=5)
    peer, _ = listener.accept()
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.recv(10)
    assert not readable(s, 0.2)
    peer.sendall(b"abc")
    assert readable(s, 5)
    assert s.recv(10) == b"abc"
    with pytest.raises(BlockingIOError):
        s.recv(10)
    assert not readable(s, 0.2)  # the would-block recv cleared it
    peer.sendall(b"def")
    assert readable(s, 5)
    assert s.recv(10) == b"def"
    peer.close()
    assert recv_when_readable(s) == b""  # EOF is an event too
    s.close()


def recv_when_readable(s, tries=5):
    """The event-loop way: wait for readiness, try; readiness may be stale (spurious), never lost."""
    for _ in range(tries):
        assert readable(s, 5)
        try:
            return s.recv(10)
        except BlockingIOError:
            continue
    raise AssertionError("readable but nothing to receive, repeatedly")


def test_fileno_readable_when_tx_credits_come_back(stack, listener):
    s = stack.create_connection(listener.getsockname(), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    sent = 0
    with pytest.raises(BlockingIOError):
        while sent < 64 << 20:
            sent += s.send(b"x" * 1024)
    got = 0
    peer.settimeout(5)
    while got < sent:
        got += len(peer.recv(65536))
    assert readable(s, 5)
    assert s.send(b"y") == 1
    peer.close()
    s.close()


def test_asyncio_add_reader_accept_and_recv(stack):
    srv = stack.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    addr = srv.getsockname()

    async def main():
        loop = asyncio.get_running_loop()

        async def wait_readable(sock):
            fut = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
            try:
                await asyncio.wait_for(fut, 5)
            finally:
                loop.remove_reader(sock.fileno())

        client = await loop.run_in_executor(None, lambda: socket.create_connection(addr, timeout=5))
        while True:
            try:
                conn, _ = srv.accept()
                break
            except BlockingIOError:
                await wait_readable(srv)
        conn.setblocking(False)
        loop.call_later(0.2, client.sendall, b"ping")
        while True:
            try:
                data = conn.recv(10)
                break
            except BlockingIOError:
                await wait_readable(conn)
        client.close()
        conn.close()
        return data

    assert asyncio.run(main()) == b"ping"
    srv.close()


def test_hostile_readiness_registrations_get_errors_and_hurt_nothing(stack, listener):
    s = stack.create_connection(listener.getsockname(), timeout=5)
    peer, _ = listener.accept()
    inst = stack.instances[0]
    efd = os.eventfd(0)
    notefd = os.memfd_create("x")
    cases = [
        (b"\xff not json", []),
        (json.dumps({"type": "watch", "sock": 10_000}).encode(), [efd]),
        (json.dumps({"type": "watch", "sock": "0"}).encode(), [efd]),
        (json.dumps({"type": "watch", "sock": 0}).encode(), []),
        (json.dumps({"type": "watch", "sock": 0}).encode(), [efd, efd]),
        (json.dumps({"type": "watch", "sock": 0}).encode(), [notefd]),
        (json.dumps({"type": "explode"}).encode(), []),
    ]
    for payload, fds in cases:
        socket.send_fds(inst.conn, [payload], fds)
        reply = json.loads(inst.conn.recv(4096))
        assert reply["type"] == "error", payload
    os.close(efd)
    os.close(notefd)
    s.sendall(b"alive")
    assert peer.recv(5) == b"alive"
    assert s.fileno() >= 0  # a proper registration still works
    peer.sendall(b"!")
    assert readable(s, 5)
    peer.close()
    s.close()
    time.sleep(0.05)


def test_stack_poll_returns_the_notification_hints(stack, listener):  # noqa: F811
    """Stack.poll drains the notification rings: an rx event of a socket shows as a Notification of its slot."""
    from isostack.frontend.readiness import Notification
    from isostack.layout import EV_RX

    s = stack.create_connection(listener.getsockname(), timeout=5)
    peer, _ = listener.accept()
    stack.poll()  # whatever the connect left
    peer.sendall(b"x")
    seen = []
    deadline = time.monotonic() + 5
    while not any(n.slot == s._slot and n.events & EV_RX for n in seen):
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
        seen += stack.poll()
    assert all(isinstance(n, Notification) for n in seen)
    assert s.recv(10) == b"x"
    peer.close()
    s.close()

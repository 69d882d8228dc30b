"""isostack/frontend/isosocket.py, the socket-like API, end to end: connect, send, recv, EOF, shutdown, reset,
refusal, listen/accept and misuse, through a real isostackd subprocess (conftest's isostackd fixture) against
kernel TCP peers on 127.0.0.1. The `stack` fixture and accept_in_thread here are shared by the other
test_isostack_frontend_*.py files."""

import errno
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from isostack.frontend import Stack
from isostack.layout import C_TX_HEAD, C_TX_TAIL, Geometry

GUEST = str(Path(__file__).resolve().parent.parent / "isostack-guest")


@pytest.fixture
def stack(isostackd):
    s = Stack(isostackd, Geometry(max_sockets=16, tx_size=1 << 16, rx_size=1 << 16))
    yield s
    s.close()



def accept_in_thread(srv):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("c", srv.accept()[0]), daemon=True)
    t.start()
    return t, box


def test_connect_send_recv_eof(stack, listener):
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    peer = box["c"]
    assert s.getpeername() == listener.getsockname()
    assert s.getsockname() == peer.getpeername()
    data = os.urandom(300_000)  # > tx ring: exercises credits and the wrap
    sender = threading.Thread(target=s.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        got += peer.recv(65536)
    sender.join(5)
    assert bytes(got) == data
    peer.sendall(b"hello")
    assert s.recv(100) == b"hello"
    peer.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b""
    assert s.recv(100) == b""  # EOF stays
    s.shutdown(socket.SHUT_WR)
    assert peer.recv(10) == b""
    s.close()
    peer.close()


def test_shutdown_returns_at_once_and_the_fin_follows_the_queued_data(stack, listener):
    """As the kernel's: shutdown(SHUT_WR) with data still queued (the peer does not read, so the tx ring stays
    full) returns without waiting for the drain, later sends fail with EPIPE, and the peer reads every byte, then
    EOF."""
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    peer = box["c"]
    s.settimeout(0.0)
    data = bytearray()
    chunk = os.urandom(4096)
    deadline = time.monotonic() + 20
    stuck_since = None
    while time.monotonic() < deadline:  # fill the kernel buffers, then the tx ring, until nothing moves
        try:
            data += chunk[: s.send(chunk)]
            stuck_since = None
        except BlockingIOError:
            head = s._words[s._control_word + C_TX_HEAD]
            if stuck_since is None or stuck_since[1] != head:
                stuck_since = (time.monotonic(), head)
            elif time.monotonic() - stuck_since[0] > 0.5:
                break  # the ring is full and the kernel takes no more: the peer reads nothing
            time.sleep(0.02)
    words, control = s._words, s._control_word
    assert words[control + C_TX_TAIL] - words[control + C_TX_HEAD] == stack.geometry.tx_size  # the ring is full
    s.settimeout(5)
    t0 = time.monotonic()
    s.shutdown(socket.SHUT_WR)
    assert time.monotonic() - t0 < 2  # did not wait for a peer that reads nothing
    with pytest.raises(BrokenPipeError):
        s.send(b"x")
    got = bytearray()
    peer.settimeout(10)
    while True:
        k = peer.recv(65536)
        if not k:
            break
        got += k
    assert bytes(got) == bytes(data)
    s.close()
    peer.close()


def test_reset_by_peer(stack, listener):
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    peer = box["c"]
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # RST
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    with pytest.raises(ConnectionResetError):
        s.send(b"x")
    s.close()


def test_connection_refused(stack):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        stack.create_connection(("127.0.0.1", port), timeout=5)


def test_listen_accept_from_kernel_client(stack):
    srv = stack.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    addr = srv.getsockname()
    assert addr[0] == "127.0.0.1" and addr[1] > 0
    srv.settimeout(0.2)
    with pytest.raises(TimeoutError):
        srv.accept()
    clients = [socket.create_connection(addr) for _ in range(3)]
    srv.settimeout(5)
    conns = [srv.accept() for _ in range(3)]
    assert sorted(c.getsockname() for c in clients) == sorted(a for _, a in conns)
    by_port = {a[1]: c for c, a in conns}
    for k in clients:
        k.sendall(b"ping%d" % k.getsockname()[1])
        c = by_port[k.getsockname()[1]]
        assert c.recv(100) == b"ping%d" % k.getsockname()[1]
        c.sendall(b"pong")
        assert k.recv(10) == b"pong"
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        srv.accept()
    for c, _ in conns:
        c.close()
    for k in clients:
        k.close()
    srv.close()


def test_errors_on_misuse(stack, listener):
    s = stack.socket()
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 1)  # not allowed: fails the socket
    s.close()
    with pytest.raises(OSError) as e:
        s.recv(1)
    assert e.value.errno == errno.EBADF
    s2 = stack.socket()
    s2.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s2.bind(("127.0.0.1", 0))
    with pytest.raises(OSError) as e:
        s2.bind(("127.0.0.1", 0))
    assert e.value.errno == errno.EINVAL
    s2.close()

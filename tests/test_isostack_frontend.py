"""Front-end semantics through a real isostackd subprocess against kernel TCP peers on 127.0.0.1."""

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from isostack.frontend import Stack
from isostack.layout import C_TX_HEAD, C_TX_TAIL, Geometry

GUEST = str(Path(__file__).resolve().parent.parent / "isostack-guest")


def start_isostackd(path, *extra):
    env = dict(os.environ, PYTHONPATH=GUEST)
    p = subprocess.Popen(
        [sys.executable, "-m", "isostack.dispatcher", "--socket", str(path), "--allow-shared", "--no-placement",
         "--busy-poll-us", "200", "--sleep-ms", "20", *extra],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline, "isostackd did not start"
        time.sleep(0.02)
    return p


@pytest.fixture(scope="module")
def isostackd(tmp_path_factory):
    path = tmp_path_factory.mktemp("iso") / "isostackd.sock"
    p = start_isostackd(path)
    yield str(path)
    p.terminate()
    p.wait(5)


@pytest.fixture
def stack(isostackd):
    s = Stack(isostackd, Geometry(max_sockets=16, tx_size=1 << 16, rx_size=1 << 16))
    yield s
    s.close()


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


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


def test_many_small_sends_are_aggregated_in_order(stack, listener):
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    peer = box["c"]
    for i in range(5000):
        s.sendall(struct.pack("<Q", i) + bytes(56))
    s.close()  # graceful: queued bytes still go out
    got = bytearray()
    while True:
        b = peer.recv(1 << 20)
        if not b:
            break
        got += b
    assert len(got) == 5000 * 64
    assert [struct.unpack_from("<Q", got, i * 64)[0] for i in range(5000)] == list(range(5000))
    peer.close()


def test_recv_timeout_and_nonblocking(stack, listener):
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


def test_partial_send_when_peer_does_not_read(stack, listener):
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    s.setblocking(False)
    total = 0
    partial = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            n = s.send(bytes(50_000))
        except BlockingIOError:
            break
        partial |= n < 50_000
        total += n
        time.sleep(0.001)
    else:
        pytest.fail("send never ran out of credits")
    assert partial  # the last send that fitted took only what the ring had room for
    assert total >= 1 << 16
    s.settimeout(0.3)
    with pytest.raises(TimeoutError):
        s.sendall(bytes(64 << 20))  # more than the ring plus any kernel buffer
    s.close()
    box["c"].close()


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


def test_slots_are_reused_after_close(isostackd, listener):
    with Stack(isostackd, Geometry(max_sockets=2, tx_size=4096, rx_size=4096)) as st:
        for _ in range(6):
            a, b = st.socket(), st.socket()
            a.close()
            b.close()
        time.sleep(0.05)
        c = st.socket()
        c.close()


def test_doorbell_rung_only_for_sleepers(stack, listener):
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    before = stack.stats()

    def later(i):
        time.sleep(0.3)
        box["c"].sendall(b"wake%d" % i)

    # A sleeping thread also wakes every MAX_SLEEP_MS on its own; if that wake-up finds the data first, the
    # dispatcher rightly saves the doorbell (as in test_isostack_notify).  So sleep a few times: at least one
    # of them must be rung.
    for i in range(5):
        threading.Thread(target=later, args=(i,), daemon=True).start()
        assert s.recv(10) == b"wake%d" % i  # slept on the doorbell
        if stack.stats()["doorbells_rung"] > before["doorbells_rung"]:
            break
    rung = stack.stats()["doorbells_rung"]
    assert rung > before["doorbells_rung"]
    # Data that arrives while no thread of ours waits: the dispatcher posts the event and saves the doorbell.
    box["c"].sendall(b"quiet")
    deadline = time.monotonic() + 5
    while stack.stats()["doorbells_saved"] == before["doorbells_saved"] and time.monotonic() < deadline:
        time.sleep(0.05)  # not waiting on the doorbell: nobody announced sleep
    after = stack.stats()
    assert after["doorbells_saved"] > before["doorbells_saved"]
    assert after["doorbells_rung"] == rung
    assert s.recv(10) == b"quiet"
    fd = s.fileno()
    assert fd >= 0
    s.close()
    box["c"].close()


@pytest.mark.parametrize("fast", [True, False])
def test_recv_into_copies_from_the_ring_across_the_wrap(stack, listener, monkeypatch, fast):
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


USE_AFTER_CLOSE = r"""
import errno, socket, sys
from isostack.frontend import Stack
from isostack.layout import C_TX_HEAD, C_TX_TAIL, Geometry

srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
st = Stack(sys.argv[1], Geometry(max_sockets=2, tx_size=4096, rx_size=4096))
s = st.create_connection(srv.getsockname(), timeout=5)
s.sendall(b"x" * 64)
st.close()  # the shared memory is unmapped; the socket object lives on
for call in (lambda: s.send(b"y" * 64), lambda: s.sendall(b"y" * 64), lambda: s.recv(64)):
    try:
        call()
    except OSError as e:
        assert e.errno == errno.EBADF, e
    else:
        raise AssertionError("a socket of a closed Stack still served a call")
print("ok")
"""


def test_a_socket_of_a_closed_stack_fails_with_ebadf_instead_of_touching_unmapped_memory(isostackd):
    """The C send path holds raw addresses of the shared memory: closing the Stack must switch its sockets off
    first. Run in a child, so that a regression shows as a failed test (SIGSEGV), not as a dead test run."""
    res = subprocess.run([sys.executable, "-c", USE_AFTER_CLOSE, isostackd], env=dict(os.environ, PYTHONPATH=GUEST),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])

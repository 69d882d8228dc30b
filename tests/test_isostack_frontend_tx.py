"""isostack/frontend/tx.py: the send path.  One C call per message (_fastpath.Tx) when the extension has it, the
Python path otherwise; SEND commands and kicks only when the dispatcher is not draining the ring.  Most tests run
the dispatcher in this process and drive it by hand (no timing involved; conftest's hand_driven and fast
fixtures); the last ones go through an isostackd subprocess.  What the dispatcher does about a SEND that never
comes: test_isostack_dispatcher_watchdog.py."""

import errno
import gc
import select
import socket
import struct
import threading
import time
import weakref

import pytest
from isostack_helpers import recv_exactly, sent_and_released
from test_isostack_frontend import accept_in_thread, stack  # noqa: F401  (fixtures)

from isostack.frontend import Stack, tx
from isostack.layout import C_DRAINING, C_TX_HEAD, C_TX_TAIL, H_DISP_SLEEPING, Geometry, Op

HAVE_TX = tx.C_TX_PATH is not None




def test_send_posts_send_only_when_the_ring_is_not_being_drained(hand_driven, fast):
    d, st, s, peer = hand_driven
    if fast:  # installed on the instance: sock.send / sock.sendall are the C methods themselves
        assert type(s.send).__name__ == "builtin_function_or_method" and s.send.__self__ is s._tx_path
        assert s.sendall.__self__ is s._tx_path
    q, cw = s._words, s._control_word
    commands, posts, kicks = d.stats["commands"], st.stats()["send_posts"], st.stats()["kicks"]
    s.sendall(b"a" * 64)
    assert s.send(b"b" * 64) == 64
    assert st.stats()["send_posts"] == posts + 1  # the first found the flag clear, the second did not
    assert q[cw + C_TX_TAIL] == s._tx_tail
    for _ in range(3):
        d.poll_once()
    assert recv_exactly(peer, 128) == b"a" * 64 + b"b" * 64
    assert q[cw + C_DRAINING] == 1
    for i in range(50):  # within the draining grace: copies only
        s.sendall(bytes([i]) * 64)
    d.poll_once()
    assert recv_exactly(peer, 3200) == b"".join(bytes([i]) * 64 for i in range(50))
    assert d.stats["commands"] == commands + 1
    assert st.stats()["send_posts"] == posts + 1
    assert st.stats()["kicks"] == kicks  # the dispatcher never announced a sleep
    d.sleep_until_woken()  # releases the grace of the empty ring
    assert q[cw + C_DRAINING] == 0
    s._owner.words[H_DISP_SLEEPING] = 1  # as while it blocks in epoll: the next SEND must kick
    s.sendall(b"c" * 64)
    s._owner.words[H_DISP_SLEEPING] = 0
    assert st.stats()["send_posts"] == posts + 2
    assert st.stats()["kicks"] == kicks + 1
    d.poll_once()
    assert d.stats["commands"] == commands + 2
    assert recv_exactly(peer, 64) == b"c" * 64


def test_a_failed_send_post_hands_the_draining_flag_back(hand_driven, fast, monkeypatch):
    """A SEND that cannot be posted (queue full for 5 s, an exception) must not keep the draining flag: the
    ring would be stranded with nobody owing a SEND.  The send fails, the next one posts."""
    d, st, s, peer = hand_driven
    q, cw = s._words, s._control_word
    sent_and_released(d, s, peer)

    def full(*a, **k):
        raise OSError(errno.EAGAIN, "command queue full or corrupt")

    monkeypatch.setattr(s, "_post", full)
    with pytest.raises(OSError):
        s._send_slow(b"b" * 64)  # the Python path (the C path falls back to it when the queue is full)
    monkeypatch.undo()
    assert q[cw + C_DRAINING] == 0
    commands = d.stats["commands"]
    s.sendall(b"c" * 64)
    for _ in range(3):
        d.poll_once()
    assert d.stats["commands"] == commands + 1
    peer.settimeout(0.5)
    assert recv_exactly(peer, 128) == b"b" * 64 + b"c" * 64
    assert d.stats["tx_stranded"] == 0


def test_send_across_the_wrap_and_partial_credits(hand_driven, fast):
    d, st, s, peer = hand_driven
    s.setblocking(False)
    data = bytes(range(256)) * 16  # 4096: the whole ring
    assert s.send(data[:3000]) == 3000
    for _ in range(3):
        d.poll_once()
    assert recv_exactly(peer, 3000) == data[:3000]
    assert s.send(data) == 4096  # ring positions 3000..7096: the copy wraps
    assert s._tx_tail == 7096 == s._words[s._control_word + C_TX_TAIL]
    with pytest.raises(BlockingIOError):  # no credits: the Python path arms the credit wait
        s.send(b"x")
    assert s._tx_armed
    if fast:
        assert not s._tx_path.fast
    d.poll_once()
    assert recv_exactly(peer, 4096) == data
    assert s.send(b"y" * 10) == 10  # credits back: the Python path disarms, the C path serves again
    assert not s._tx_armed
    if fast:
        assert s._tx_path.fast
    d.poll_once()
    assert recv_exactly(peer, 10) == b"y" * 10
    s.setblocking(True)
    s.settimeout(0.05)
    half = bytes(3000)
    s.sendall(half)
    with pytest.raises(TimeoutError):  # 1096 bytes of credits, then the slow path waits and times out
        s.sendall(bytes(2000))
    assert s._tx_tail - s._words[s._control_word + C_TX_HEAD] == 4096  # the ring is full, nothing lost from the count


@pytest.fixture
def running(dispatcher_thread, listener):
    """(stack, connected socket, kernel peer) served by a dispatcher thread."""
    path = dispatcher_thread().path
    st = Stack(path, Geometry(max_sockets=4, tx_size=4096, rx_size=4096, notif_rings=1))
    try:
        s = st.create_connection(listener.getsockname(), timeout=5)
        peer, _ = listener.accept()
        peer.settimeout(5)
        yield st, s, peer
        peer.close()
    finally:
        st.close()


def test_send_checks_are_kept(running, fast):
    st, s, peer = running
    assert s.send(b"") == 0
    assert s.send(memoryview(b"abcd")[1:3], 0) == 2
    with pytest.raises(OSError) as e:
        s.send(b"x", socket.MSG_DONTWAIT)
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as e:
        s.sendall(b"x", flags=socket.MSG_DONTWAIT)
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(TypeError):
        s.send("not bytes")
    with pytest.raises(TypeError):
        s.send()
    other = st.socket()
    with pytest.raises(OSError) as e:
        other.send(b"x")  # not connected
    assert e.value.errno == errno.ENOTCONN
    ref = weakref.ref(other)
    other.close()
    del other, e  # (the traceback refers to it)
    gc.collect()
    assert ref() is None  # the socket <-> Tx cycle is collectable
    assert recv_exactly(peer, 2) == b"bc"
    s.shutdown(socket.SHUT_WR)
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.EPIPE
    s.close()
    with pytest.raises(OSError) as e:
        s.sendall(b"x")
    assert e.value.errno == errno.EBADF


def test_c_path_posts_the_send_itself_and_falls_back_to_python_when_the_queue_is_full(hand_driven, monkeypatch):
    """The C send path queues SEND (with the tail) and flags the socket pending without calling into Python; a full
    command queue sends it to the Python post, which waits for a slot."""
    if not HAVE_TX:
        pytest.skip("the extension has no Tx here")
    d, st, s, peer = hand_driven
    q, cw = s._words, s._control_word
    sent_and_released(d, s, peer)
    python_posts = []
    real_post = s._post
    monkeypatch.setattr(s, "_post", lambda *a, **k: python_posts.append(a) or real_post(*a, **k))
    posts = st.stats()["send_posts"]
    s.sendall(b"b" * 64)
    assert python_posts == [] and st.stats()["send_posts"] == posts + 1
    assert q[cw + C_DRAINING] == 1  # the SEND is queued (the dispatcher reads it below)
    d.poll_once()
    peer.settimeout(0.5)
    assert recv_exactly(peer, 64) == b"b" * 64
    d.sleep_until_woken()
    assert q[cw + C_DRAINING] == 0

    # Fill the command queue with harmless entries (NOPs are not valid commands: use GETSOCKNAME), then send.
    filler = 0
    while s._command_queue.push(Op.GETSOCKNAME, s._slot) >= 0:
        filler += 1
    assert filler == s._command_queue.nslots
    s._owner.flag_pending(s._slot)
    done = threading.Event()

    def drain_later():
        threading.Event().wait(0.2)
        d.poll_once()  # frees the slots; the Python post waiting in _post gets one
        done.set()

    t = threading.Thread(target=drain_later)
    t.start()
    s.sendall(b"c" * 64)
    t.join(5)
    assert done.is_set() and len(python_posts) == 1 and python_posts[0][0] == Op.SEND
    deadline = time.monotonic() + 5  # the fillers, then the SEND: a few passes (each gives the app a time share)
    while not select.select([peer], [], [], 0)[0] and time.monotonic() < deadline:
        d.poll_once()
    assert recv_exactly(peer, 64) == b"c" * 64
    assert st.stats()["send_posts"] == posts + 2


# ---------------------------------------------------------------- through an isostackd subprocess


def test_many_small_sends_are_aggregated_in_order(stack, listener):  # noqa: F811
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


def test_partial_send_when_peer_does_not_read(stack, listener):  # noqa: F811
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

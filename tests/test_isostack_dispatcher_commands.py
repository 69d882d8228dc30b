"""isostackd's socket commands against hostile applications: a bad entry fails that socket only (commands.py)."""

import errno
import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isostack.frontend import Stack
from isostack.layout import (
    BODY,
    C_NOTIF_RING,
    C_RX_HEAD,
    C_TX_HEAD,
    C_TX_TAIL,
    ENTRY,
    ST_ACCEPTABLE,
    ST_ERROR,
    Geometry,
    Op,
)

GEO = Geometry(max_sockets=8, tx_size=1 << 14, rx_size=1 << 14, notif_rings=1)


@pytest.fixture(scope="module")
def daemon(isostackd_process):
    return isostackd_process


def roundtrip(s, payload=b"still works"):
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(100)
        assert chunk, f"EOF after {got!r}"  # an ended stream must fail the test, not spin it forever
        got += chunk
    assert got == payload


def wait_failed(s, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not s._state() & ST_ERROR:
        assert time.monotonic() < deadline, "socket was not failed"
        time.sleep(0.005)


def push_raw(s, op, **kw):
    """Post an entry the way a hostile front-end would: any values, then flag the socket pending."""
    pos = s._command_queue.push(op, kw.pop("sock", s._slot), kw.get("a", 0), kw.get("b", 0), kw.get("c", 0))
    assert pos >= 0
    s._owner.flag_pending(s._slot)
    return pos


HOSTILE = {
    "bad opcode": (lambda s: push_raw(s, 77), errno.EPROTO),
    "other socket id": (lambda s: push_raw(s, Op.LISTEN, sock=s._slot + 1), errno.EBADF),
    "send beyond the ring": (lambda s: (s._words.__setitem__(s._control_word + C_TX_TAIL,
                                                             s._words[s._control_word + C_TX_HEAD] + 10 * (1 << 14)),
                                        push_raw(s, Op.SEND, a=s._words[s._control_word + C_TX_TAIL])), errno.EFAULT),
    "send names a tail it never wrote": (lambda s: push_raw(s, Op.SEND, a=s._words[s._control_word + C_TX_HEAD] + 5000),
                                         errno.EFAULT),
    "accept into a slot out of range": (lambda s: push_raw(s, Op.ACCEPT, a=1000), errno.EBADF),
    "listen group naming a member it lacks": (lambda s: push_raw(s, Op.LISTEN, a=16, b=2, c=0xFFFFFFFFFFFFFF05),
                                              errno.EINVAL),
    "notification ring that does not exist": (lambda s: (s._words.__setitem__(s._control_word + C_NOTIF_RING, 99),
                                                         push_raw(s, Op.GETSOCKNAME)), errno.EINVAL),
    "socket on a slot in use": (lambda s: push_raw(s, Op.SOCKET, a=socket.AF_INET, b=socket.SOCK_STREAM), errno.EBADF),
}


def wrong_sequence(s):
    """Write a complete-looking entry whose command sequence field lies."""
    cq = s._command_queue
    pos = cq.q[cq.tail_word]
    assert native_cas(cq, pos)
    off = cq.slots_off + (pos & cq.mask) * 64
    cq.buf[off : off + 64] = ENTRY.pack(pos + 1, pos + 3, Op.LISTEN, 0, s._slot, 1, 0, 0, b"")
    s._owner.flag_pending(s._slot)


def corrupt_sequence(s):
    cq = s._command_queue
    pos = cq.q[cq.tail_word]
    cq.q[(cq.slots_off + (pos & cq.mask) * 64) // 8] = pos + 999
    s._owner.flag_pending(s._slot)


def rx_head_beyond_tail(s):
    s._words[s._control_word + C_RX_HEAD] = s._words[s._control_word + C_RX_HEAD] + (1 << 20)
    s._owner.flag_pending(s._slot)
    s.sendall(b"echo back, so the dispatcher looks at the rx credits")


def native_cas(cq, pos):
    from isostack import native

    return native.cas64(cq.tail_addr, pos, pos + 1)


HOSTILE["wrong sequence"] = (wrong_sequence, errno.EPROTO)
HOSTILE["corrupt slot sequence"] = (corrupt_sequence, errno.EPROTO)
HOSTILE["rx head beyond tail"] = (rx_head_beyond_tail, errno.EFAULT)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_entry_fails_that_socket_only(daemon, echo, name):
    proc, path = daemon
    attack, err = HOSTILE[name]
    with Stack(path, GEO) as victim_app, Stack(path, GEO) as hostile_app:
        victim = victim_app.create_connection(echo.addr, timeout=5)
        bystander = hostile_app.create_connection(echo.addr, timeout=5)  # the attacker's own other socket
        target = hostile_app.create_connection(echo.addr, timeout=5)
        roundtrip(victim)
        attack(target)
        wait_failed(target)
        with pytest.raises(OSError) as e:
            target.recv(10)
        assert e.value.errno == err
        roundtrip(victim)
        roundtrip(bystander)
        assert proc.poll() is None
        target.close()
        victim.close()
        bystander.close()


def test_garbage_pending_bits_are_ignored(daemon, echo):
    proc, path = daemon
    with Stack(path, GEO) as app:
        s = app.create_connection(echo.addr, timeout=5)
        for idx in range(GEO.max_sockets):
            app.instances[0].flag_pending(idx)  # free slots with empty queues: nothing happens
        app.instances[0].words[64 + 8 + 7] = (1 << 64) - 1  # bits beyond max_sockets in the bitmap's last word
        roundtrip(s)
        assert proc.poll() is None


def test_body_struct_is_what_push_writes():
    assert BODY.size == 48


def test_lock_ablation_mode_serves_traffic(tmp_path, echo, isostackd_launcher):
    path = tmp_path / "locks.sock"
    p = isostackd_launcher.start(path, "--uncontended-locks")
    try:
        with Stack(str(path), GEO) as app:
            assert app.info["locks"] is True
            s = app.create_connection(echo.addr, timeout=5)
            roundtrip(s, os.urandom(100_000))
            s.close()
    finally:
        isostackd_launcher.stop(p)




@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.binary(min_size=48, max_size=48), min_size=1, max_size=6))
def test_fuzzed_entries_never_hurt_the_dispatcher_or_another_app(daemon, echo, entries):
    """Arbitrary 48-byte bodies posted to an open socket: the dispatcher survives, the other app's socket and
    the attacker's next fresh socket keep working."""
    proc, path = daemon
    with Stack(path, GEO) as victim_app, Stack(path, GEO) as hostile_app:
        victim = victim_app.create_connection(echo.addr, timeout=5)
        target = hostile_app.socket()
        for body in entries:
            if int.from_bytes(body[:2], "little") in (Op.CONNECT, Op.BIND):  # loopback only, whatever the fuzz
                body = body[:32] + socket.inet_aton("127.0.0.1").ljust(16, b"\0")
            if target._command_queue.push_body(body) < 0:
                break
            hostile_app.instances[0].flag_pending(target._slot)
        roundtrip(victim)
        fresh = hostile_app.create_connection(echo.addr, timeout=5)
        roundtrip(fresh)
        assert proc.poll() is None


@pytest.mark.parametrize("word", ["tx", "rx"])
def test_ring_index_near_2_64_fails_that_socket_only(daemon, echo, word):
    """A slot whose front-end index starts next to 2**64: growing it would overflow the u64 word."""
    proc, path = daemon
    with Stack(path, GEO) as victim_app, Stack(path, GEO) as hostile_app:
        victim = victim_app.create_connection(echo.addr, timeout=5)
        cw = GEO.control_off(0) // 8  # the slot the hostile app's next socket gets
        hostile_app.instances[0].words[cw + (C_TX_TAIL if word == "tx" else C_RX_HEAD)] = (1 << 64) - 10
        with pytest.raises(OSError) as e:
            hostile_app.create_connection(echo.addr, timeout=5)
        assert e.value.errno == errno.EFAULT
        roundtrip(victim)
        assert proc.poll() is None
        victim.close()


def test_closing_a_listener_with_queued_connections_closes_them(daemon, echo):
    """CLOSE of a listening socket (and the detach of its application) with connections the dispatcher accepted
    but the application did not: the queued connections are closed, the dispatcher lives on."""
    proc, path = daemon
    with Stack(path, GEO) as app, Stack(path, GEO) as other_app:
        bystander = other_app.create_connection(echo.addr, timeout=5)
        srv = app.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        clients = [socket.create_connection(srv.getsockname()) for _ in range(2)]
        srv.settimeout(5)
        conn, _ = srv.accept()  # the dispatcher has filled its backlog: the second one waits there
        srv.close()
        for client in clients[1:]:
            client.settimeout(5)
            assert client.recv(10) == b""  # closed by the dispatcher, not left half-open
        conn.close()
        for client in clients:
            client.close()
        roundtrip(bystander)
        assert proc.poll() is None
        srv = app.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        late = socket.create_connection(srv.getsockname())
        deadline = time.monotonic() + 5
        while not srv._state() & ST_ACCEPTABLE:  # queued in the dispatcher's backlog
            assert time.monotonic() < deadline
            time.sleep(0.005)
    late.settimeout(5)
    assert late.recv(10) == b""  # the application detached: its queued connection is closed too
    late.close()
    assert proc.poll() is None

"""isostackd against hostile applications, crashing applications, bad attachments, and its CLI checks."""

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_isostack_frontend import GUEST, start_isostackd

from isostack.dispatcher import choose_cpu
from isostack.frontend import Stack
from isostack.layout import (
    BODY,
    C_NOTIF_RING,
    C_RX_HEAD,
    C_TX_HEAD,
    C_TX_TAIL,
    ENTRY,
    ST_ERROR,
    Geometry,
    Op,
)
from isostack.queues import create_memfd

GEO = Geometry(max_sockets=8, tx_size=1 << 14, rx_size=1 << 14, notif_rings=1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    path = tmp_path_factory.mktemp("isod") / "isostackd.sock"
    p = start_isostackd(path)
    yield p, str(path)
    p.terminate()
    p.wait(5)


class EchoPeer:
    """A kernel TCP echo server on 127.0.0.1 (one thread per connection)."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.addr = self.srv.getsockname()
        self.conns = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while b := c.recv(65536):
                c.sendall(b)
        except OSError:
            pass
        c.close()

    def close(self):
        self.srv.close()


@pytest.fixture
def echo():
    e = EchoPeer()
    yield e
    e.close()


def roundtrip(s, payload=b"still works"):
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += s.recv(100)
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


def maps_with_memfd(pid):
    return sum("memfd:isostack" in line for line in open(f"/proc/{pid}/maps"))


CRASHER = textwrap.dedent("""
    import sys, time
    from isostack.frontend import Stack
    st = Stack(sys.argv[1])
    s = st.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5)
    s.sendall(b"hi")
    print("ready", flush=True)
    time.sleep(60)
""")


def test_killed_application_sockets_closed_and_memory_released_within_a_second(daemon):
    proc, path = daemon
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    deadline = time.monotonic() + 2
    while maps_with_memfd(proc.pid) and time.monotonic() < deadline:  # earlier tests' apps detach
        time.sleep(0.01)
    maps_before = maps_with_memfd(proc.pid)
    app = subprocess.Popen([sys.executable, "-c", CRASHER, path, str(srv.getsockname()[1])],
                           env=dict(os.environ, PYTHONPATH=GUEST), stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout.readline().strip() == "ready"
        conn, _ = srv.accept()
        assert conn.recv(10) == b"hi"
        assert maps_with_memfd(proc.pid) > maps_before
        app.kill()
        t0 = time.monotonic()
        conn.settimeout(1.0)
        assert conn.recv(10) == b""  # isostackd closed the dead application's socket
        while maps_with_memfd(proc.pid) > maps_before:
            assert time.monotonic() - t0 < 1.0, "shared memory still mapped"
            time.sleep(0.01)
        assert time.monotonic() - t0 < 1.0
    finally:
        app.kill()
        app.wait()
        srv.close()
    assert proc.poll() is None


def attach_raw(path, payload, fds):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.connect(path)
    socket.send_fds(c, [payload], fds)
    c.settimeout(5)
    reply = json.loads(c.recv(4096))
    c.close()
    return reply


def hello():
    return json.dumps({"type": "attach", "version": 1, "geometry": GEO.to_dict(), "pid": 1, "name": "x"}).encode()


def test_attach_refuses_unsealed_memory_and_wrong_fds(daemon):
    proc, path = daemon
    efd = os.eventfd(0)
    unsealed = os.memfd_create("x")
    os.ftruncate(unsealed, GEO.total_size)
    small = create_memfd(4096)
    try:
        assert "sealed" in attach_raw(path, hello(), [unsealed, efd])["message"]
        assert "bytes" in attach_raw(path, hello(), [small, efd])["message"]
        assert "2 fds" in attach_raw(path, hello(), [efd])["message"]
        assert "eventfd" in attach_raw(path, hello(), [unsealed_ok := create_memfd(GEO.total_size), small])["message"]
        os.close(unsealed_ok)
        assert "JSON" in attach_raw(path, b"\xff garbage", [small, efd])["message"]
        bad = json.dumps({"type": "attach", "version": 1, "geometry": {**GEO.to_dict(), "tx_size": 3}}).encode()
        assert "power of two" in attach_raw(path, bad, [small, efd])["message"]
        two = json.dumps({"type": "attach", "version": 1, "geometry": {**GEO.to_dict(), "notif_rings": 2}}).encode()
        assert "3 fds" in attach_raw(path, two, [small, efd])["message"]  # a doorbell per notification ring
        for rings in (0, 65):
            bad = json.dumps({"type": "attach", "version": 1, "geometry": {**GEO.to_dict(), "notif_rings": rings}})
            assert "notif_rings" in attach_raw(path, bad.encode(), [small, efd])["message"]
        big = Geometry(**{**GEO.to_dict(), "notif_rings": 2})
        mem = create_memfd(big.total_size)
        msg = json.dumps({"type": "attach", "version": 1, "geometry": big.to_dict(), "pid": 1, "name": "x"}).encode()
        assert "eventfd" in attach_raw(path, msg, [mem, efd, small])["message"]  # the second doorbell is no eventfd
        os.close(mem)
    finally:
        for fd in (efd, unsealed, small):
            os.close(fd)
    assert proc.poll() is None


def test_body_struct_is_what_push_writes():
    assert BODY.size == 48


def test_lock_ablation_mode_serves_traffic(tmp_path, echo):
    path = tmp_path / "locks.sock"
    p = start_isostackd(path, "--uncontended-locks")
    try:
        with Stack(str(path), GEO) as app:
            assert app.info["locks"] is True
            s = app.create_connection(echo.addr, timeout=5)
            roundtrip(s, os.urandom(100_000))
            s.close()
    finally:
        p.terminate()
        p.wait(5)


def test_cpu_choice():
    assert choose_cpu(1, False, {0, 1}, {1}) == 1
    assert choose_cpu(None, False, {0, 1, 2, 3}, {2, 3}) == 3
    with pytest.raises(SystemExit, match="does not exist"):
        choose_cpu(5, True, {0, 1}, set())
    with pytest.raises(SystemExit, match="shared"):
        choose_cpu(1, False, {0, 1}, set())
    assert choose_cpu(1, True, {0, 1}, set()) == 1


def test_cli_refuses_missing_cpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "isostack.dispatcher", "--socket", str(tmp_path / "s"), "--cpu", "4096",
                        "--no-placement"], env=dict(os.environ, PYTHONPATH=GUEST), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "CPU 4096 does not exist" in r.stderr


def test_cli_refuses_second_instance_on_same_socket(daemon):
    _proc, path = daemon
    r = subprocess.run([sys.executable, "-m", "isostack.dispatcher", "--socket", path, "--allow-shared",
                        "--no-placement"], env=dict(os.environ, PYTHONPATH=GUEST), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "another isostackd" in r.stderr


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

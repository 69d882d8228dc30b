"""isostackd's application attach: bad attachments are refused, a crashed application's sockets and memory are
released (applications.py)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from isostack.layout import Geometry
from isostack.queues import create_memfd

GEO = Geometry(max_sockets=8, tx_size=1 << 14, rx_size=1 << 14, notif_rings=1)


@pytest.fixture(scope="module")
def daemon(isostackd_process):
    return isostackd_process


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


def test_killed_application_sockets_closed_and_memory_released_within_a_second(daemon, guest_env):
    proc, path = daemon
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    deadline = time.monotonic() + 2
    while maps_with_memfd(proc.pid) and time.monotonic() < deadline:  # earlier tests' apps detach
        time.sleep(0.01)
    maps_before = maps_with_memfd(proc.pid)
    app = subprocess.Popen([sys.executable, "-c", CRASHER, path, str(srv.getsockname()[1])],
                           env=guest_env, stdout=subprocess.PIPE, text=True)
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


def test_a_detached_application_is_freed_at_once_not_by_a_late_gc_collection(dispatcher_thread, listener):
    """Its socket slots point back at it: unless detach breaks that cycle, every detached application (64 slots
    by default) waits for one of the cyclic gc's rare full collections (the soak saw RSS grow every round)."""
    import gc
    import weakref

    from isostack.frontend import Stack

    running = dispatcher_thread()
    gc.disable()
    try:
        st = Stack(running.path, GEO)
        s = st.create_connection(listener.getsockname(), timeout=5)
        peer, _ = listener.accept()
        s.sendall(b"x")
        assert peer.recv(1) == b"x"
        (app,) = running.dispatcher.shared.apps.values()
        freed = weakref.ref(app)
        del app
        st.close()
        peer.close()
        deadline = time.monotonic() + 5
        while freed() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert freed() is None, "the detached application is still alive (only a gc collection would free it)"
    finally:
        gc.enable()

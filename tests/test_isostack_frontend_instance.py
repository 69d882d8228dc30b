"""isostack/frontend/instance.py: attaching to every isostackd instance, the slot allocator, and detaching
(every socket of a closed Stack is switched off; every instance closes the Stack's connections)."""

import os
import socket
import subprocess
import sys
import time

import pytest
from test_isostack_frontend import GUEST
from test_isostack_frontend_steering import GEO, two  # noqa: F401  (fixture)

from isostack.attach import instance_path
from isostack.frontend import Stack
from isostack.layout import Geometry


def test_slots_are_reused_after_close(isostackd, listener):  # noqa: F811
    with Stack(isostackd, Geometry(max_sockets=2, tx_size=4096, rx_size=4096)) as st:
        for _ in range(6):
            a, b = st.socket(), st.socket()
            a.close()
            b.close()
        time.sleep(0.05)
        c = st.socket()
        c.close()


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


def test_a_socket_of_a_closed_stack_fails_with_ebadf_instead_of_touching_unmapped_memory(isostackd):  # noqa: F811
    """The C send path holds raw addresses of the shared memory: closing the Stack must switch its sockets off
    first. Run in a child, so that a regression shows as a failed test (SIGSEGV), not as a dead test run."""
    res = subprocess.run([sys.executable, "-c", USE_AFTER_CLOSE, isostackd], env=dict(os.environ, PYTHONPATH=GUEST),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])


def test_stack_attaches_to_every_instance(two):  # noqa: F811
    with Stack(two, GEO) as st:
        assert [(i.id, i.cpu, sorted(i.rx_queues)) for i in st.instances] == [(0, 0, [0]), (1, 1, [1])]
        stats = st.stats()
        assert [s["instance"] for s in stats["instances"]] == [0, 1]
        socks = [st.socket() for _ in range(4)]
        assert [s.instance for s in socks] == [0, 1, 0, 1]  # round-robin, as each dispatcher reports it
        for s in socks:
            s.close()
    with Stack(two, GEO, instances=[1]) as st:
        assert [i.id for i in st.instances] == [1]


def test_detach_closes_sockets_on_every_instance(two):  # noqa: F811
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    st = Stack(two, GEO, classifier=None)
    a, b = st.create_connection(lst.getsockname(), timeout=5), st.create_connection(lst.getsockname(), timeout=5)
    assert {a.instance, b.instance} == {0, 1}
    peers = [lst.accept()[0] for _ in range(2)]
    st.close()
    for p in peers:
        p.settimeout(2)
        assert p.recv(10) == b""
        p.close()
    time.sleep(0.05)
    lst.close()


def test_stale_socket_of_a_killed_instance_is_skipped_when_discovered(two):  # noqa: F811
    stale = instance_path(two, 5)
    u = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    u.bind(stale)  # bound, never listening: what a SIGKILLed isostackd leaves behind
    u.close()
    try:
        with Stack(two, GEO) as st:
            assert [i.id for i in st.instances] == [0, 1]
        with pytest.raises(ConnectionRefusedError):
            Stack(two, GEO, instances=[5])  # asked for by number: an error
    finally:
        os.unlink(stale)

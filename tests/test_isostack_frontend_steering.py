"""isostack/frontend/steering.py: which instance owns a connection when several run.  The reuseport group gives a
passive connection to the instance owning its rx queue / CPU; an active open picks a source port whose hash lands
on its instance; a listener's fileno covers every instance.

These run two dispatchers over loopback on this host (instance k on CPU k); on loopback the SYN is processed on
the sending thread's CPU and there is no rx queue, so the BPF program's CPU rule decides.
"""

import os
import socket
import threading

import pytest

from isostack.attach import instance_path
from isostack.frontend import Stack
from isostack.layout import Geometry
from isostack.rss import Classifier

GEO = Geometry(max_sockets=32, tx_size=1 << 14, rx_size=1 << 14)
KEY = bytes(range(7, 47))  # any 40 bytes
SETTINGS = {"queues": 2, "key": KEY.hex(), "hash_types": ["ipv4", "tcp4"], "reta": [0, 1] * 64, "rules": []}
two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


@pytest.fixture(scope="module")
def two(tmp_path_factory, isostackd_launcher):
    base = str(tmp_path_factory.mktemp("inst") / "isostackd.sock")
    procs = []
    for k in (0, 1):
        procs.append(isostackd_launcher.start(instance_path(base, k), "--instance", str(k), "--cpu", str(k),
                                              "--queues", str(k)))
    yield base
    for p in procs:
        isostackd_launcher.stop(p)


@two_cpus
def test_passive_connection_owned_by_the_instance_on_the_syn_cpu(two):
    with Stack(two, GEO) as st:
        srv = st.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        addr = srv.getsockname()
        assert len(srv._members) == 2
        clients = []

        def connect_from(cpu, n):
            os.sched_setaffinity(0, {cpu})
            for _ in range(n):
                c = socket.create_connection(addr, timeout=5)
                clients.append((cpu, c.getsockname()[1], c))

        for cpu in (0, 1):
            t = threading.Thread(target=connect_from, args=(cpu, 8))
            t.start()
            t.join(10)
        srv.settimeout(5)
        owner = {}
        for _ in range(16):
            a, peer = srv.accept()
            owner[peer[1]] = (a.instance, a.rx_cpu)
            a.sendall(b"%d" % a.instance)
        for cpu, port, c in clients:
            assert owner[port] == (cpu, cpu), f"connection from CPU {cpu} accepted by {owner[port]}"
            assert c.recv(8) == b"%d" % cpu  # and it works through that instance
            c.close()
        srv.close()


def test_active_open_picks_a_source_port_that_hashes_to_its_instance(two):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    cl = Classifier(SETTINGS)
    with Stack(two, GEO, classifier=cl) as st:
        socks = [st.create_connection(lst.getsockname(), timeout=5) for _ in range(6)]
        for s in socks:
            peer, (_, sport) = lst.accept()
            local = s.getsockname()
            assert local[1] == sport
            assert s.rx_queue == s.instance  # instance k owns queue k
            assert cl.queue_for_connection("127.0.0.1", sport, *lst.getsockname()) == s.instance
            s.sendall(b"ping")
            assert peer.recv(4) == b"ping"
            peer.close()
            s.close()
        assert sorted(s.instance for s in socks) == [0, 0, 0, 1, 1, 1]
    with Stack(two, GEO, classifier=None) as st:  # no classifier settings: the kernel picks the port
        s = st.create_connection(lst.getsockname(), timeout=5)
        assert s.rx_queue is None
        s.close()
    lst.close()


@two_cpus
def test_listener_fileno_covers_every_instance(two):
    import selectors

    with Stack(two, GEO) as st:
        srv = st.socket()
        fd = srv.fileno()  # registered before listen(): the members created by listen() are watched too
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.setblocking(False)
        for cpu in (1, 0):
            box = {}

            def connect(c=cpu, box=box):
                os.sched_setaffinity(0, {c})
                box["c"] = socket.create_connection(srv.getsockname(), timeout=5)

            t = threading.Thread(target=connect)
            t.start()
            t.join(5)
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                a = None
                for _ in range(5):
                    assert sel.select(5)
                    try:
                        a, _ = srv.accept()
                        break
                    except BlockingIOError:
                        continue
            assert a is not None and a.instance == cpu
            a.close()
            box["c"].close()
        srv.close()

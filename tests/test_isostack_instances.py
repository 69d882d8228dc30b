"""Several isostackd instances: discovery, the reuseport group that gives a passive connection to the instance
owning its rx queue / CPU (its BPF program is tested in test_isostack_dispatcher_kernel.py), source ports of active
opens that hash to the socket's instance, per-queue placement.

The integration tests run two dispatchers over loopback on this host (instance k on CPU k); on loopback the SYN
is processed on the sending thread's CPU and there is no rx queue, so the BPF program's CPU rule decides.
"""

import errno
import os
import socket
import threading
import time

import pytest
from test_isostack_layout import entry

from isostack import placement
from isostack.attach import discover, instance_path
from isostack.frontend import Stack
from isostack.layout import BadEntry, Geometry, Op, decode_command, encode_listen_group, listen_group
from isostack.rss import Classifier, ports_for_queues

GEO = Geometry(max_sockets=32, tx_size=1 << 14, rx_size=1 << 14)
KEY = bytes(range(7, 47))  # any 40 bytes
SETTINGS = {"queues": 2, "key": KEY.hex(), "hash_types": ["ipv4", "tcp4"], "reta": [0, 1] * 64, "rules": []}
two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


# ---------------------------------------------------------------- pure parts


def test_instance_paths_and_discovery(tmp_path):
    base = str(tmp_path / "isostackd.sock")
    assert instance_path(base, 0) == base
    assert instance_path(base, 3) == str(tmp_path / "isostackd-3.sock")
    assert discover(base) == []
    for name in ("isostackd.sock", "isostackd-2.sock", "isostackd-1.sock", "isostackd-x.sock", "isostackd-01.sock",
                 "isostackd-99.sock", "other-1.sock"):
        (tmp_path / name).touch()
    assert discover(base) == [(0, base), (1, instance_path(base, 1)), (2, instance_path(base, 2))]


def test_listen_group_roundtrip_and_hostile_groups():
    b, c, ip = encode_listen_group([3, 1], {0: 1, 1: 0, 5: 1})
    assert listen_group(b, c, ip) == ([3, 1], {0: 1, 1: 0, 5: 1})
    cmd = decode_command(entry(Op.LISTEN, a=16, b=b, c=c, ip=ip), 5, 3, Geometry(max_sockets=8))
    assert (cmd.b, cmd.c) == (2, c)
    hostile = [
        entry(Op.LISTEN, a=16, b=17),  # more members than the entry can describe
        entry(Op.LISTEN, a=16, b=2, c=0xFFFFFFFFFFFFFF03),  # rx queue 0 owned by member 3 of 2
        entry(Op.LISTEN, a=16, b=2, c=(1 << 64) - 1, ip=b"\x00\xff"),  # CPU 255
    ]
    for raw in hostile:
        with pytest.raises(BadEntry) as e:
            decode_command(raw, 5, 3, Geometry(max_sockets=8))
        assert e.value.err == errno.EINVAL
    with pytest.raises(ValueError):
        encode_listen_group([0, 1], {2: 2})


def test_ports_for_queues_land_on_the_wanted_queues():
    cl = Classifier(SETTINGS)
    got = list(ports_for_queues(cl, "10.0.0.1", "10.0.0.2", 5001, {1}, 40000, 40999, start=40000, limit=1000))
    assert 300 < len(got) < 700  # reta alternates: about half of the ports
    for port, q in got:
        assert q == 1
        # independently: frames of that connection arrive from the peer (src) to us (dst)
        assert cl.queue("10.0.0.2", "10.0.0.1", 5001, port) == 1
    others = {p for p, _ in ports_for_queues(cl, "10.0.0.1", "10.0.0.2", 5001, {0}, 40000, 40999, start=40000)}
    assert others.isdisjoint(p for p, _ in got) and len(others) + len(got) == 1000
    pinned = Classifier({**SETTINGS, "reta": [0] * 128})
    assert list(ports_for_queues(pinned, "10.0.0.1", "10.0.0.2", 5001, {1}, 40000, 40999, limit=50)) == []


def test_place_only_the_instances_queues(tmp_path):
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    dev = sysfs / "devices/pci0000:00/0000:00:03.0/virtio1"
    drv = sysfs / "bus/virtio/drivers/virtio_net"
    drv.mkdir(parents=True)
    dev.mkdir(parents=True)
    (dev / "driver").symlink_to(drv)
    iface = sysfs / "class/net/eth1"
    for q in ("rx-0", "rx-1", "tx-0", "tx-1"):
        (iface / "queues" / q).mkdir(parents=True)
    (iface / "device").symlink_to(dev)
    proc.mkdir()
    (proc / "interrupts").write_text(
        " 25:  10  0  PCI-MSI 49153-edge  virtio1-input.0\n"
        " 26:   5  0  PCI-MSI 49154-edge  virtio1-output.0\n"
        " 27:  10  0  PCI-MSI 49155-edge  virtio1-input.1\n"
        " 28:   5  0  PCI-MSI 49156-edge  virtio1-output.1\n"
    )
    for irq in (25, 26, 27, 28):
        (proc / "irq" / str(irq)).mkdir(parents=True)
    placement.place(1, None, str(proc), str(sysfs), queues={1})
    placement.place(0, None, str(proc), str(sysfs), queues={0})
    assert [(proc / f"irq/{i}/smp_affinity_list").read_text() for i in (25, 26, 27, 28)] == ["0\n", "0\n", "1\n", "1\n"]
    assert (iface / "queues/rx-0/rps_cpus").read_text() == "00000001\n"
    assert (iface / "queues/rx-1/rps_cpus").read_text() == "00000002\n"
    assert (iface / "queues/tx-1/xps_cpus").read_text() == "00000002\n"


# ---------------------------------------------------------------- two dispatchers over loopback


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


def test_stack_attaches_to_every_instance(two):
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


def test_detach_closes_sockets_on_every_instance(two):
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


def test_stale_socket_of_a_killed_instance_is_skipped_when_discovered(two):
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

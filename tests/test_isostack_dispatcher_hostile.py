"""isostackd with a hostile application (issue 12): each test drives a real `python3 -m isostack.dispatcher`
with a small hostile client, then checks that the dispatcher still serves a well-behaved application."""

import errno
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from isostack.attach import MAX_MESSAGE, Hello
from isostack.frontend import Stack
from isostack.layout import C_NOTIF_RING, C_WATCH_ARMED, H_MAGIC, H_VERSION, MAGIC, R_SLEEPERS, VERSION, Geometry, Op
from isostack.queues import Region, create_memfd

GEOMETRY = Geometry(max_sockets=16, tx_size=1 << 16, rx_size=1 << 16)
NOBODY = 65534


@pytest.fixture
def daemon(isostackd_launcher):
    """start(*extra, rlimit_nofile=None) -> (process, path) of a fresh isostackd (a world-reachable directory:
    the isolation test attaches as another uid)."""
    directory = tempfile.mkdtemp(prefix="isohostile-")
    os.chmod(directory, 0o755)
    started = []

    def start(*extra, rlimit_nofile=None):
        path = os.path.join(directory, f"isostackd{len(started)}.sock")
        if rlimit_nofile is None:
            process = isostackd_launcher.start(path, *extra)
        else:
            old = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, old[1]))
            try:  # inherited by the child
                process = isostackd_launcher.start(path, *extra)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, old)
        started.append(process)
        return process, path

    yield start
    for process in started:
        if process in isostackd_launcher.running:
            if process.poll() is None:
                isostackd_launcher.stop(process)
            else:
                isostackd_launcher.running.remove(process)
    shutil.rmtree(directory, ignore_errors=True)


def serves(process, path, timeout: float = 5.0) -> None:
    """The dispatcher still runs and serves a new, well-behaved application."""
    assert process.poll() is None, f"isostackd died: {process.stderr.read()[-3000:]}"
    stack = Stack(path, GEOMETRY, connect_timeout=timeout)
    try:
        s = stack.socket()
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[1] > 0
        s.close()
    finally:
        stack.close()
    assert process.poll() is None


def raw_hello(path: str) -> tuple[socket.socket, list[int]]:
    """A valid hello with a sealed memfd and blocking doorbells, sent on a fresh connection: (connection, fds)."""
    memfd = create_memfd(GEOMETRY.resolved().check().total_size)
    geometry = GEOMETRY.resolved().check()
    region = Region(memfd, geometry.total_size)
    region.q[H_MAGIC], region.q[H_VERSION] = MAGIC, VERSION
    region.close()
    doorbells = [os.eventfd(0) for _ in range(geometry.notif_rings)]
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.connect(path)
    socket.send_fds(connection, [Hello(geometry, os.getpid(), "hostile").encode()], [memfd, *doorbells])
    return connection, [memfd, *doorbells]


# ---------------------------------------------------------------------------------------- 1. nobody kills it


def test_deeply_nested_hello_and_watch_are_refused(daemon):
    process, path = daemon()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.connect(path)
    connection.send(b"[" * (MAX_MESSAGE - 1))
    connection.settimeout(5)
    assert json.loads(connection.recv(MAX_MESSAGE))["type"] == "error"
    connection.close()
    serves(process, path)
    stack = Stack(path, GEOMETRY)
    try:
        conn = stack.instances[0].conn
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        socket.send_fds(conn, [b"{\"type\": " + b"[" * 4000], [efd])
        assert json.loads(conn.recv(MAX_MESSAGE))["type"] == "error"
        os.close(efd)
        serves(process, path)
    finally:
        stack.close()


def test_a_hello_then_gone_costs_nothing(daemon):
    process, path = daemon()
    for _ in range(20):
        connection, fds = raw_hello(path)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
        for fd in fds:
            os.close(fd)
    time.sleep(0.3)
    serves(process, path)


def test_socket_and_accept_failing_for_want_of_fds(daemon):
    """socket() in a SOCKET command and accept() of the attach socket both fail with EMFILE."""
    process, path = daemon(rlimit_nofile=48)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (_exhaust_fds(process, path), done.set()), daemon=True)
    thread.start()
    thread.join(30)
    assert done.is_set(), f"the front-end hung (isostackd exit status {process.poll()})"
    serves(process, path)


def _exhaust_fds(process, path):
    stack = Stack(path, Geometry(max_sockets=64, tx_size=1 << 12, rx_size=1 << 12))
    try:
        sockets, failed = [], None
        for _ in range(64):
            try:
                sockets.append(stack.socket())
            except OSError as e:
                failed = e
                break
        assert failed is not None and failed.errno == errno.EMFILE, failed
        assert process.poll() is None, process.stderr.read()[-3000:]
        clients = []
        for _ in range(8):  # the dispatcher has no fd left to accept them with
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.connect(path)
            clients.append(c)
        time.sleep(0.5)
        assert process.poll() is None, process.stderr.read()[-3000:]
        for c in clients:
            c.close()
        for s in sockets:
            s.close()
    finally:
        stack.close()


# ---------------------------------------------------------------------------- 2. eventfds never block the loop


def test_a_blocking_full_doorbell_does_not_hang_the_dispatcher(daemon):
    process, path = daemon()
    hostile = Stack(path, GEOMETRY)
    try:
        instance = hostile.instances[0]
        for fd in hostile.doorbells.fds:  # shared file description: we may make it blocking, and fill it
            os.set_blocking(fd, True)
            os.eventfd_write(fd, 0xFFFFFFFFFFFFFFFE)
        for word in instance.ring_words:
            instance.words[word + R_SLEEPERS] = 1  # "a thread sleeps on it": the dispatcher rings it
        slot = instance.alloc_slot(hostile.wait)
        instance.words[GEOMETRY.resolved().check().control_off(slot) // 8 + C_NOTIF_RING] = 0
        instance.queues[slot].push(Op.SOCKET, slot, socket.AF_INET, socket.SOCK_STREAM)
        instance.flag_pending(slot)
        time.sleep(0.3)
        serves(process, path)
    finally:
        for fd in hostile.doorbells.fds:
            os.set_blocking(fd, False)
        hostile.close()


def test_a_blocking_full_readiness_fd_does_not_hang_the_dispatcher(daemon):
    process, path = daemon()
    hostile = Stack(path, GEOMETRY)
    efd = os.eventfd(0)
    try:
        instance = hostile.instances[0]
        slot = instance.alloc_slot(hostile.wait)
        instance.watch(slot, efd)  # the dispatcher makes it non-blocking: the description is shared
        os.set_blocking(efd, True)
        os.eventfd_write(efd, 0xFFFFFFFFFFFFFFFE)
        control = GEOMETRY.resolved().check().control_off(slot) // 8
        instance.words[control + C_WATCH_ARMED] = 1
        instance.queues[slot].push(Op.SOCKET, slot, socket.AF_INET, socket.SOCK_STREAM)  # its result: an event
        instance.flag_pending(slot)
        time.sleep(0.3)
        serves(process, path)
    finally:
        os.set_blocking(efd, False)
        os.close(efd)
        hostile.close()


# ---------------------------------------------------------------------------------------- 3. isolation


def _as_nobody(path: str, port: int, result_fd: int) -> None:
    """In a forked child: attach as uid 65534, try to join the port's group and a privileged port."""
    out = {}
    try:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        stack = Stack(path, GEOMETRY)
        s = stack.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(16)
            out["joined"] = True
            s.settimeout(1.5)
            got = 0
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                try:
                    conn, _ = s.accept()
                    conn.close()
                    got += 1
                except (OSError, TimeoutError):
                    break
            out["accepted"] = got
        except OSError as e:
            out["join_errno"] = e.errno
        p = stack.socket()
        try:
            p.bind(("127.0.0.1", 81))
            out["privileged"] = True
        except OSError as e:
            out["privileged_errno"] = e.errno
        stack.close()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out["crash"] = repr(e)
    os.write(result_fd, json.dumps(out).encode())
    os._exit(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run an application as another uid")
def test_an_application_of_another_uid_cannot_join_a_root_listener(daemon):
    process, path = daemon()
    owner = Stack(path, Geometry(max_sockets=64, tx_size=1 << 12, rx_size=1 << 12))
    try:
        listener = owner.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _as_nobody(path, port, write_end)
        os.close(write_end)
        time.sleep(1.0)  # the child joined (or not) by now: connect while it would accept
        accepted = []
        stop = threading.Event()

        def accept_all():
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                    accepted.append(conn)
                except (OSError, TimeoutError):
                    pass

        thread = threading.Thread(target=accept_all)
        thread.start()
        clients = []
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        os.waitpid(pid, 0)
        result = json.loads(os.read(read_end, 4096) or b"{}")
        os.close(read_end)
        deadline = time.monotonic() + 5
        while len(accepted) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join()
        for c in clients + accepted:
            c.close()
        assert "crash" not in result, result
        assert result.get("join_errno") == errno.EADDRINUSE, result
        assert result.get("privileged_errno") == errno.EACCES, result
        assert len(accepted) == 20
        listener.close()
    finally:
        owner.close()
    serves(process, path)


def test_no_steering_program_on_a_group_of_another_application(daemon):
    process, path = daemon()
    owner, other = Stack(path, GEOMETRY), Stack(path, GEOMETRY)
    try:
        listener = owner.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        intruder = other.socket()
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        intruder.bind(("127.0.0.1", port))  # same uid: the kernel lets it join, as it would without isostackd
        with pytest.raises(OSError) as refused:
            intruder._call(Op.LISTEN, 16, 1, 0, bytes([0]))  # a one-member group steering every SYN to it
        assert refused.value.errno == errno.EPERM
        intruder.close()
        listener.close()
    finally:
        other.close()
        owner.close()
    serves(process, path)


# ---------------------------------------------------------------------------------------- 4. fairness

HAMMER = r"""
import socket, sys
from isostack import native
from isostack.frontend import Stack
from isostack.layout import Geometry, Op
from isostack.queues import BODY
stack = Stack(sys.argv[1], Geometry(max_sockets=4, cmdq_slots=16384, tx_size=1 << 12, rx_size=1 << 12))
instance = stack.instances[0]
slot = stack.socket()._slot
queue = instance.queues[slot]
body = BODY.pack(Op.GETSOCKOPT, 0, slot, socket.SOL_SOCKET, socket.SO_ERROR, 0, b"")
push, tail, slots, nslots = native.mpsc_push, queue.tail_addr, queue.slots_addr, queue.nslots
print("ready", flush=True)
while True:  # keep one (large) command queue full, never wait for a result
    while push(tail, slots, nslots, body) >= 0:
        pass
    instance.flag_pending(slot)
"""


def _good_operations(path, latencies):
    good = Stack(path, GEOMETRY, connect_timeout=10)
    try:
        for _ in range(20):
            start = time.monotonic()
            s = good.socket()
            s.bind(("127.0.0.1", 0))
            s.close()
            latencies.append(time.monotonic() - start)
    finally:
        good.close()


def test_a_hammering_application_does_not_starve_a_good_one(daemon, guest_env):
    process, path = daemon()
    hammer = subprocess.Popen([sys.executable, "-c", HAMMER, path], env=guest_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert hammer.stdout.readline().strip() == "ready", hammer.stderr.read()
        time.sleep(0.5)
        latencies = []
        thread = threading.Thread(target=_good_operations, args=(path, latencies), daemon=True)
        thread.start()
        thread.join(20)
        assert hammer.poll() is None, hammer.stderr.read()
        assert len(latencies) == 20, f"{len(latencies)} of 20 operations done in 20 s while another hammered"
        # Before the per-queue budget one dispatcher pass took ~3 s with a full queue, so 20 operations did not
        # finish in 20 s. The median (not the max: the host is shared, one operation may wait for the CPU) says
        # the good application is served every pass; generous, since the machine may be loaded.
        median = sorted(latencies)[len(latencies) // 2]
        assert median < 1.0, f"a well-behaved operation took {median:.3f} s (median) while another hammered"
    finally:
        hammer.kill()
        hammer.wait()
    serves(process, path)


# ------------------------------------------------------------------------------- 5. silent clients cost nothing


def test_silent_clients_do_not_block_the_attach_of_others(daemon):
    process, path = daemon()
    silent = []
    for _ in range(4):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(path)
        silent.append(c)
    start = time.monotonic()
    serves(process, path)
    took = time.monotonic() - start
    for c in silent:
        c.close()
    assert took < 0.8, f"a well-behaved attach took {took:.2f} s behind 4 silent clients"

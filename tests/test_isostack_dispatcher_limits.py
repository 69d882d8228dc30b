"""The limits isostackd puts on one application (docs/isostack.md, "Limits"), each counted when hit, and its last
line of defence: an unexpected exception on one application's path closes that application only."""

import errno
import socket
import time

import pytest

from isostack.dispatcher.state import Limits
from isostack.frontend import Stack
from isostack.layout import Geometry, Op

GEOMETRY = Geometry(max_sockets=16, tx_size=1 << 12, rx_size=1 << 12)


def test_an_unexpected_exception_closes_that_application_only(dispatcher_thread):
    running = dispatcher_thread()
    victim, bystander = Stack(running.path, GEOMETRY), Stack(running.path, GEOMETRY)
    try:
        commands = running.dispatcher.commands
        take = commands.take_commands
        victim_id = victim.instances[0].info["app"]

        def broken(app):
            if app.id == victim_id:
                raise ZeroDivisionError("a bug on this application's path")
            return take(app)

        commands.take_commands = broken
        instance = victim.instances[0]
        slot = instance.alloc_slot(victim.wait)
        instance.queues[slot].push(Op.SOCKET, slot, socket.AF_INET, socket.SOCK_STREAM)
        instance.flag_pending(slot)  # (its front-end would wait for the result forever: not waited for here)
        stats = running.dispatcher.stats
        deadline = time.monotonic() + 5
        while not stats["apps_failed"] and time.monotonic() < deadline:
            time.sleep(0.02)
        s = bystander.socket()
        s.bind(("127.0.0.1", 0))
        s.close()
        assert stats["apps_failed"] == 1
        assert stats["app_failures"] == {"unexpected ZeroDivisionError in broken": 1}
        assert running.thread.is_alive()
    finally:
        victim.close()
        bystander.close()


def test_kernel_sockets_per_application_are_bounded(dispatcher_thread):
    running = dispatcher_thread(limits=Limits(max_kernel_sockets=3))
    stack = Stack(running.path, GEOMETRY)
    try:
        sockets = [stack.socket() for _ in range(3)]
        with pytest.raises(OSError) as refused:
            stack.socket()
        assert refused.value.errno == errno.EMFILE
        assert running.dispatcher.stats["app_socket_limit"] == 1
        sockets.pop().close()
        time.sleep(0.1)
        sockets.append(stack.socket())  # a closed one frees its place
        for s in sockets:
            s.close()
    finally:
        stack.close()


def test_accepted_connections_count_against_the_limit(dispatcher_thread):
    running = dispatcher_thread(limits=Limits(max_kernel_sockets=3))
    stack = Stack(running.path, GEOMETRY)
    try:
        listener = stack.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(5)]
        deadline = time.monotonic() + 5
        while running.dispatcher.stats["app_socket_limit"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        app = next(iter(running.dispatcher.shared.apps.values()))
        assert app.kernel_sockets == 3  # the listener and two accepted: the rest wait in the kernel
        for c in clients:
            c.close()
        listener.close()
    finally:
        stack.close()


def test_attachments_are_bounded(dispatcher_thread):
    running = dispatcher_thread(limits=Limits(max_apps=2))
    stacks = [Stack(running.path, GEOMETRY) for _ in range(2)]
    try:
        with pytest.raises(Exception, match="applications already"):
            Stack(running.path, GEOMETRY)
        assert running.dispatcher.stats["attach_refused_limit"] == 1
    finally:
        for stack in stacks:
            stack.close()


def test_silent_connections_are_bounded_and_timed_out(dispatcher_thread):
    running = dispatcher_thread(limits=Limits(max_handshakes=2, handshake_timeout_s=0.2))
    silent = []
    for _ in range(3):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(running.path)
        silent.append(c)
    for c in silent:
        c.settimeout(2)
    replies = [c.recv(4096) for c in silent]
    assert replies.count(b"") >= 1  # the third one was closed at once
    assert any(b"no attach request in time" in r for r in replies)
    stats = running.dispatcher.stats
    assert stats["handshakes_dropped"] == 1 and stats["handshakes_timed_out"] == 2
    for c in silent:
        c.close()
    Stack(running.path, GEOMETRY).close()  # and a well-behaved one attaches


def _always_writable(kernel):
    class AlwaysWritable:
        def register(self, fd, events):
            self.fd = fd

        def poll(self, timeout):
            return [(self.fd, kernel.select.POLLOUT)]
    return AlwaysWritable


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "other-thread"])
def test_an_eventfd_write_that_blocks_nevertheless_is_unblocked(monkeypatch, in_thread):
    """The race poll(POLLOUT) cannot close (the owner fills its eventfd right after our poll): the guard thread
    sees a write stuck on a counter without room, reads the counter down and the write says so; in the main
    thread and in any other (a dispatcher run by a thread)."""
    import os
    import threading

    from isostack.dispatcher import kernel

    writer = kernel.EventfdWriter({"eventfd_full": 0})
    efd = os.eventfd(0)  # blocking
    os.eventfd_write(efd, 0xFFFFFFFFFFFFFFFE)  # full
    monkeypatch.setattr(kernel.select, "poll", _always_writable(kernel))
    outcome = []

    def write():
        try:
            outcome.append(writer.write(efd, 1))
        except kernel.EventfdBlocked:
            outcome.append("blocked")

    try:
        start = time.monotonic()
        if in_thread:
            thread = threading.Thread(target=write)
            thread.start()
            thread.join(10)
            assert not thread.is_alive(), "the write is still blocked"
        else:
            write()
        assert outcome == ["blocked"]
        assert time.monotonic() - start < 5.0
        monkeypatch.undo()
        assert os.eventfd_read(efd) < 0xFFFFFFFFFFFFFFFE  # read down, then written
    finally:
        writer.close()
        os.close(efd)


def test_a_slow_eventfd_write_with_room_is_not_taken_for_a_blocked_one(monkeypatch):
    """The loop thread preempted in the middle of a write (a loaded machine) is not a hostile application: the
    counter had room, so the write goes through and nothing is read from it (the soak met this false alarm with
    the former SIGALRM guard: "doorbell eventfd would block" closed a well-behaved isoperf client)."""
    import os

    from isostack.dispatcher import kernel

    writer = kernel.EventfdWriter({"eventfd_full": 0})
    efd = os.eventfd(0)  # blocking, far from full
    real_write = os.eventfd_write

    def slow_write(fd, value):
        time.sleep(4 * writer.GUARD_S)
        real_write(fd, value)

    monkeypatch.setattr(kernel.os, "eventfd_write", slow_write)
    try:
        assert writer.write(efd, 3) is True
        monkeypatch.undo()
        assert os.eventfd_read(efd) == 3
    finally:
        writer.close()
        os.close(efd)


def test_the_eventfd_guard_sleeps_without_writes_and_wakes_for_one():
    import os

    from isostack.dispatcher import kernel

    writer = kernel.EventfdWriter({"eventfd_full": 0})
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert writer.write(efd, 1) is True
        deadline = time.monotonic() + 10
        while writer._active.is_set() and time.monotonic() < deadline:  # idle: the guard stops waking up
            time.sleep(0.05)
        assert not writer._active.is_set()
        assert writer.write(efd, 1) is True
        assert writer._active.is_set()
        assert os.eventfd_read(efd) == 2
    finally:
        writer.close()
        os.close(efd)
    assert not writer._guard.is_alive()



@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root to own a socket as another uid")
@pytest.mark.parametrize("owner_uid", [0, 65534], ids=["same-uid", "other-uid"])
def test_a_reuseport_join_the_same_uid_rule_refuses_is_counted(dispatcher_thread, owner_uid):
    """The kernel refuses a SO_REUSEPORT bind into another uid's group (EADDRINUSE); isostackd counts it
    (reuseport_refused) and lets a same-uid join through uncounted."""
    from isostack.dispatcher.kernel import socket_as

    running = dispatcher_thread()
    holder = socket_as(owner_uid, socket.AF_INET, socket.SOCK_STREAM)  # as if another uid's application
    stack = Stack(running.path, GEOMETRY)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen(4)
        joiner = stack.socket()
        joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if owner_uid == 0:
            joiner.bind(holder.getsockname())
            joiner.listen(4)
            assert running.dispatcher.stats["reuseport_refused"] == 0
        else:
            with pytest.raises(OSError) as refused:
                joiner.bind(holder.getsockname())
            assert refused.value.errno == errno.EADDRINUSE
            assert running.dispatcher.stats["reuseport_refused"] == 1
        plain = stack.socket()  # a bind that fails without SO_REUSEPORT is no refused join
        with pytest.raises(OSError):
            plain.bind(holder.getsockname())
        assert running.dispatcher.stats["reuseport_refused"] == (owner_uid != 0)
    finally:
        stack.close()
        holder.close()

"""Application attach: accepting applications on the attach socket, mapping their regions, and releasing all
of an application's sockets and memory as soon as its attach connection closes (it exited or crashed).

The attach connection also carries readiness registrations (an eventfd per watched socket) while it lives.
Anyone may connect (the socket is 0666): the hello is awaited without blocking the loop (a handshake with a
deadline), the peer's credentials (SO_PEERCRED) are recorded, and every limit (state.Limits) is counted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import stat
import struct
import time
from typing import NamedTuple

from ..attach import MAX_MESSAGE, AttachError, encode_reply, parse_hello, parse_watch
from ..layout import MAX_RINGS, Geometry
from .kernel import KernelSockets
from .state import Application, SharedState

log = logging.getLogger("isostackd")

SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 2)
LISTEN_PAUSE_S = 0.1  # after accept failed for want of fds


class Handshake(NamedTuple):
    """An accepted connection waiting for its hello."""

    connection: socket.socket
    deadline: float


class Applications:
    """The attached applications: attach, readiness registrations, detach."""

    def __init__(self, shared: SharedState, kernel_sockets: KernelSockets, listener: socket.socket, kick_fd: int,
                 cpu: int | None, queues: list[int] | None, so_busy_poll_us: int):
        self.shared = shared
        self.kernel_sockets = kernel_sockets
        self.listener = listener
        self.kick_fd = kick_fd
        self.cpu = cpu
        self.queues = queues
        self.so_busy_poll_us = so_busy_poll_us
        self.next_app = 1
        self.handshakes: dict[int, Handshake] = {}  # accepted connections whose hello has not arrived, by fd
        self.listener_paused_until = 0.0  # accept failed (out of fds): the listener is out of the epoll set

    def accept(self) -> None:
        """Accept one connection: its hello is awaited without blocking the loop (handshake), up to
        Limits.max_handshakes at a time, each for at most Limits.handshake_timeout_s."""
        shared = self.shared
        limits = shared.limits
        try:
            connection, _ = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as e:  # EMFILE/ENFILE/ENOBUFS: the queued connection waits; stop listening a moment
            shared.stats["accept_failed"] += 1
            log.warning("accept on the attach socket: %s", e)
            self.pause_listening()
            return
        if len(self.handshakes) >= limits.max_handshakes:
            shared.stats["handshakes_dropped"] += 1
            connection.close()
            return
        connection.setblocking(False)
        fd = connection.fileno()
        self.handshakes[fd] = Handshake(connection, time.monotonic() + limits.handshake_timeout_s)
        shared.epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    def pause_listening(self) -> None:
        """Out of fds: the listener leaves the epoll set (it would wake us in a loop) until resume_listening."""
        if self.listener_paused_until == 0.0:
            self.shared.epoll.unregister(self.listener.fileno())
        self.listener_paused_until = time.monotonic() + LISTEN_PAUSE_S

    def resume_listening(self, now: float) -> None:
        if self.listener_paused_until and now >= self.listener_paused_until:
            self.listener_paused_until = 0.0
            self.shared.epoll.register(self.listener.fileno(), select.EPOLLIN)

    def expire_handshakes(self, now: float) -> None:
        """Close the connections whose hello did not arrive in time."""
        for fd, handshake in list(self.handshakes.items()):
            if now >= handshake.deadline:
                self.shared.stats["handshakes_timed_out"] += 1
                self._end_handshake(fd)
                self._refuse(handshake.connection, "no attach request in time", [])

    def _end_handshake(self, fd: int) -> Handshake:
        handshake = self.handshakes.pop(fd)
        try:
            self.shared.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        return handshake

    def hello(self, fd: int) -> None:
        """The first message of an accepted connection: attach the application (hello, fds, memory), reply
        with our kick eventfd."""
        shared = self.shared
        connection = self.handshakes[fd].connection
        fds: list[int] = []
        try:
            data, fds, _flags, _addr = socket.recv_fds(connection, MAX_MESSAGE, 1 + MAX_RINGS)
        except BlockingIOError:
            return
        except OSError as e:
            self._end_handshake(fd)
            self._refuse(connection, str(e), fds)
            return
        self._end_handshake(fd)
        try:
            if len(shared.apps) >= shared.limits.max_apps:
                shared.stats["attach_refused_limit"] += 1
                raise AttachError(f"isostackd serves {shared.limits.max_apps} applications already")
            hello = parse_hello(data, len(fds))
            memfd, doorbells = fds[0], fds[1:]
            self._check_fds(memfd, doorbells, hello.geometry)
            pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                       struct.calcsize("3i")))
            app = Application(self.next_app, connection, hello.geometry, memfd, doorbells, hello.pid, uid)
            fds = []
        except (AttachError, OSError, ValueError) as e:
            self._refuse(connection, str(e), fds)
            return
        self.next_app += 1
        reply = encode_reply(type="attached", app=app.id, cpu=self.cpu, pid=os.getpid(), locks=shared.lock is not None,
                             membarrier=shared.membarrier, instance=shared.instance, queues=self.queues,
                             busy_poll={"socket_us": self.so_busy_poll_us,
                                        "epoll_us": shared.stats["epoll_busy_poll_us"]})
        try:
            socket.send_fds(connection, [reply], [self.kick_fd])
        except OSError as e:  # it sent its hello and went away (EPIPE), or its buffer is full
            log.warning("attach of app %d: cannot reply: %s", app.id, e)
            self._release(app)
            connection.close()
            shared.stats["attach_failed"] += 1
            return
        shared.apps[connection.fileno()] = app
        shared.epoll.register(connection.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        shared.stats["apps_attached"] += 1
        log.info("app %d attached (pid %s, uid %d, %d sockets, %d bytes shared)", app.id, pid, uid,
                 app.geometry.max_sockets, app.geometry.total_size)

    def _refuse(self, connection: socket.socket, why: str, fds: list[int]) -> None:
        log.warning("attach refused: %s", why)
        self.shared.stats["attach_refused"] += 1
        try:
            connection.send(encode_reply(type="error", message=why))
        except OSError:
            pass
        connection.close()
        for fd in fds:
            os.close(fd)

    @staticmethod
    def _check_fds(memfd: int, doorbells: list[int], geometry: Geometry) -> None:
        st = os.fstat(memfd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < geometry.total_size:
            raise AttachError(f"shared memory is {st.st_size} bytes, geometry needs {geometry.total_size}")
        seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        if not seals & SEAL_SHRINK:
            raise AttachError("shared memory must be a memfd sealed with F_SEAL_SHRINK")
        for doorbell in doorbells:
            if os.readlink(f"/proc/self/fd/{doorbell}") != "anon_inode:[eventfd]":
                raise AttachError("doorbell is not an eventfd")
            os.set_blocking(doorbell, False)

    def detach(self, app: Application, why: str) -> None:
        """Close the application's kernel sockets and release its memory (called when its connection ends)."""
        if app.detached:
            return
        app.detached = True
        shared = self.shared
        fd = app.connection.fileno()
        shared.apps.pop(fd, None)
        try:
            shared.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        closed = 0
        for slot in app.sockets:
            if slot.kernel_socket is not None or slot.backlog:
                closed += 1
            self.kernel_sockets.close(slot)
        app.connection.close()
        self._release(app)
        shared.stats["apps_detached"] += 1
        log.info("app %d detached (%s): %d sockets closed", app.id, why, closed)

    @staticmethod
    def _release(app: Application) -> None:
        """Close its fds and unmap its memory.  Its socket slots point back at it (slot.app): dropping them
        breaks that cycle, so reference counting frees the application at once; else it waited for one of
        the cyclic gc's full collections, which an idle-ish dispatcher makes every many minutes (the soak saw
        RSS grow by ~55 KiB a round of 3 attaches)."""
        for fd in [*app.doorbells, *app.readiness_fds.values()]:
            os.close(fd)
        app.doorbells = []
        app.readiness_fds.clear()
        app.region.close()
        app.sockets = []

    def close(self) -> None:
        for fd in list(self.handshakes):
            self._end_handshake(fd).connection.close()

    def message(self, app: Application) -> None:
        """A readiness registration on the attach connection, or its end (the application is gone)."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(app.connection, MAX_MESSAGE, 2)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self.detach(app, "connection closed")
            return
        try:
            kind, index = parse_watch(data, len(fds), app.geometry.max_sockets)
            if kind == "watch":
                if os.readlink(f"/proc/self/fd/{fds[0]}") != "anon_inode:[eventfd]":
                    raise AttachError("readiness fd is not an eventfd")
                os.set_blocking(fds[0], False)
                if index not in app.readiness_fds and len(app.readiness_fds) >= self.shared.limits.max_watches:
                    self.shared.stats["watch_limit"] += 1
                    raise AttachError(f"at most {self.shared.limits.max_watches} readiness fds per application")
                old = app.readiness_fds.pop(index, None)
                if old is not None:
                    os.close(old)
                app.readiness_fds[index] = fds.pop()
            else:
                old = app.readiness_fds.pop(index, None)
                if old is not None:
                    os.close(old)
            reply = encode_reply(type="watching" if kind == "watch" else "unwatched", sock=index)
        except (AttachError, OSError) as e:
            self.shared.stats["bad_messages"] += 1
            log.warning("app %d: bad message on its attach connection: %s", app.id, e)
            reply = encode_reply(type="error", message=str(e))
        for fd in fds:
            os.close(fd)
        try:
            app.connection.send(reply)
        except OSError:
            pass

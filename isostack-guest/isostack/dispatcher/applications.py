"""Application attach: accepting applications on the attach socket, mapping their regions, and releasing all
of an application's sockets and memory as soon as its attach connection closes (it exited or crashed).

The attach connection also carries readiness registrations (an eventfd per watched socket) while it lives.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import stat

from ..attach import MAX_MESSAGE, AttachError, encode_reply, parse_hello, parse_watch
from ..layout import MAX_RINGS, Geometry
from .kernel import KernelSockets
from .state import Application, SharedState

log = logging.getLogger("isostackd")

SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 2)


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

    def accept(self) -> None:
        """Attach one application: check its hello and fds, map its memory, reply with our kick eventfd."""
        shared = self.shared
        try:
            connection, _ = self.listener.accept()
        except BlockingIOError:
            return
        connection.settimeout(1.0)
        fds: list[int] = []
        try:
            data, fds, _flags, _addr = socket.recv_fds(connection, MAX_MESSAGE, 1 + MAX_RINGS)
            hello = parse_hello(data, len(fds))
            memfd, doorbells = fds[0], fds[1:]
            self._check_fds(memfd, doorbells, hello.geometry)
            app = Application(self.next_app, connection, hello.geometry, memfd, doorbells, hello.pid)
            fds = []
        except (AttachError, OSError, ValueError) as e:
            log.warning("attach refused: %s", e)
            try:
                connection.send(encode_reply(type="error", message=str(e)))
            except OSError:
                pass
            connection.close()
            for fd in fds:
                os.close(fd)
            return
        self.next_app += 1
        reply = encode_reply(type="attached", app=app.id, cpu=self.cpu, pid=os.getpid(), locks=shared.lock is not None,
                             membarrier=shared.membarrier, instance=shared.instance, queues=self.queues,
                             busy_poll={"socket_us": self.so_busy_poll_us,
                                        "epoll_us": shared.stats["epoll_busy_poll_us"]})
        socket.send_fds(connection, [reply], [self.kick_fd])
        connection.setblocking(False)
        shared.apps[connection.fileno()] = app
        shared.epoll.register(connection.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        shared.stats["apps_attached"] += 1
        log.info("app %d attached (pid %s, %d sockets, %d bytes shared)", app.id, app.pid,
                 app.geometry.max_sockets, app.geometry.total_size)

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
        for fd in [*app.doorbells, *app.readiness_fds.values()]:
            os.close(fd)
        app.readiness_fds.clear()
        app.region.close()
        shared.stats["apps_detached"] += 1
        log.info("app %d detached (%s): %d sockets closed", app.id, why, closed)

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

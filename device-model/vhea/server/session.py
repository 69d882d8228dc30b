"""The vhost-user session of each port: the front-end connection accepted (server role) or made (client role,
retried every RECONNECT_S), its requests handed to the BackendHandler, the kick eventfds watched, and the
connection closed with a logged reason. A Server mixin (loop.py): it uses the loop's selector and work sets.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time

from ..connection import Connection, Disconnected, RepliesNotRead
from ..eventfds import eventfd_drain, eventfd_signal
from ..handler import BackendHandler
from ..net_backend import NetBackend, guard_hits, memory_truncated
from ..protocol import ProtocolError, request_name
from ..switch import Switch
from ..vring import Vring
from .port import Port, PortRing

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package

#: a client-role port retries its connect this often while the front-end's socket is not there
RECONNECT_S = 1.0


class VhostSession:
    """Front-end connections, their requests and kicks (mixed into Server). Uses _service_tx (txservice.py) and
_unregister (loop.py)."""

    # the Server's state this mixin uses (set in loop.Server.__init__)
    ports: dict[str, Port]
    sel: selectors.BaseSelector
    switch: Switch
    _native: object | None
    _busy: set[PortRing]
    _touched: set[PortRing]
    _deferred: set[PortRing]
    _paced: set[PortRing]
    #: SIGBUS guard hits already handled (_check_memory_guard)
    _guard_hits_seen: int = 0

    def _connect_due(self, now: float) -> None:
        for port in self.ports.values():
            if port.client and port.conn is None and port.serves and port.next_connect <= now:
                self._try_connect(port, now)

    def _try_connect(self, port: Port, now: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(0.5)
        try:
            sock.connect(port.path)
        except OSError as e:
            sock.close()
            port.connect_attempts += 1
            port.next_connect = now + RECONNECT_S
            log.info("port %s: cannot connect to %s (%s); retrying in %.0f s (attempt %d)", port.name, port.path,
                     e.strerror or e, RECONNECT_S, port.connect_attempts)
            return
        port.connect_attempts = 0
        self._attach(port, sock)
        log.info("port %s: connected to the front-end at %s", port.name, port.path)

    def _on_accept(self, port: Port) -> None:
        if port.listener is None:
            return  # removed while its event was pending
        try:
            sock, _ = port.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not port.serves:  # link down: closed unserved, so QEMU (reconnect=1) keeps the NIC's link down
            sock.close()
            port.refused_link_down += 1
            if port.refused_link_down == 1 or port.refused_link_down % 60 == 0:
                log.info("port %s: link down: front-end connection closed unserved (%d so far)", port.name,
                         port.refused_link_down)
            return
        if port.conn is not None:
            log.warning("port %s: second front-end connected while one is active; refused", port.name)
            sock.close()
            return
        self._attach(port, sock)
        log.info("port %s: front-end connected", port.name)

    def _attach(self, port: Port, sock: socket.socket) -> None:
        port.conn = Connection(sock)
        port.handler = BackendHandler(port.name, NetBackend(port.queue_pairs, port.name))
        for ring, counters in zip(port.handler.device.rings, port.queue_counters, strict=True):
            ring.counters = counters
        port.handler.device.native = self._native
        self.sel.register(port.conn.sock, selectors.EVENT_READ, ("conn", port))

    def _on_message(self, port: Port) -> None:
        conn, handler = port.conn, port.handler
        if conn is None or handler is None:
            return
        msgs = []
        handled = 0
        try:
            msgs = conn.read()  # bounded per call (connection.READ_BUDGET_*); the rest comes next loop pass
            self._unwatch_kicks(port)  # before any handler closes or replaces a kick fd (epoll keeps stale ones)
            for msg in msgs:
                log.debug("port %s: %s size %d fds %d", port.name, request_name(msg.request), msg.header.size,
                          len(msg.fds))
                handled += 1  # handle() consumes or closes the fds of its message, whatever happens
                reply = handler.handle(msg)
                if reply is not None:
                    conn.send(reply)
            self._watch_kicks(port)
        except RepliesNotRead as e:
            log.warning("port %s: %s; closing the connection", port.name, e)
            self._close_peer(port, "replies not read")
        except Disconnected as e:
            self._disconnect(port, f"front-end disconnected ({e})")
        except ProtocolError as e:
            log.warning("port %s: protocol error: %s; closing the connection", port.name, e)
            self._close_peer(port, "protocol error")
        except Exception:
            log.exception("port %s: internal error in the request handler; closing the connection", port.name)
            self._close_peer(port, "internal error")
        finally:
            for msg in msgs[handled:]:  # the batch ended early: fds nobody will take are closed
                msg.close_fds()

    def _check_memory_guard(self) -> None:
        """Close the ports whose front-end shrank its guest memory file under us (SIGBUS guard, net_backend.py):
        their memory is zero pages of our own now. One integer compare per loop turn when nothing happened."""
        hits = guard_hits()
        if hits == self._guard_hits_seen:
            return
        self._guard_hits_seen = hits
        for port in list(self.ports.values()):
            if port.handler is not None and memory_truncated(port.handler.device.mem):
                log.warning("port %s: the front-end shrank its guest memory file (SIGBUS caught); closing the "
                            "connection", port.name)
                self._close_peer(port, "memory truncated")

    def _close_peer(self, port: Port, reason: str) -> None:
        """vhea closes this front-end (its fault, or ours): counted by reason in the port's stats."""
        port.closed[reason] = port.closed.get(reason, 0) + 1
        self._disconnect(port, reason)

    def _unwatch_kicks(self, port: Port) -> None:
        for fd in list(port.kick_fds):
            self._unregister(fd)
        port.kick_fds.clear()

    def _watch_kicks(self, port: Port) -> None:
        if port.handler is None:
            return
        for ring in port.handler.device.rings:
            if ring.kick_fd is not None and ring.started and ring.error is None:
                self.sel.register(ring.kick_fd, selectors.EVENT_READ, ("kick", (port, ring)))
                port.kick_fds[ring.kick_fd] = ring
                if ring.ready and ring.index % 2 == 1:
                    self._busy.add((port, ring))  # frames may have been queued before the kick fd came

    def _disconnect(self, port: Port, reason: str, retry: bool = True) -> None:
        if port.conn is None:
            return
        self._unwatch_kicks(port)
        self._unregister(port.conn.sock)
        self._busy = {(p, r) for p, r in self._busy if p is not port}
        self._touched = {(p, r) for p, r in self._touched if p is not port}
        self._deferred = {(p, r) for p, r in self._deferred if p is not port}
        self._paced = {(p, r) for p, r in self._paced if p is not port}
        port.stalled.clear()  # frames held for the port are dropped as not_connected by _drain_held
        if port.handler is not None:
            port.handler.close()
        port.conn.close()
        port.conn = None
        port.handler = None
        self.switch.forget_port(port.name)
        if port.client and retry:
            port.next_connect = time.monotonic() + RECONNECT_S
            log.info("port %s: %s; reconnecting to %s every %.0f s", port.name, reason, port.path, RECONNECT_S)
        elif retry:
            log.info("port %s: %s; waiting for a new front-end", port.name, reason)
        else:
            log.info("port %s: %s", port.name, reason)

    def _stop_ring(self, port: Port, ring: Vring, reason: str) -> None:
        log.warning("port %s: queue %d stopped: %s", port.name, ring.index, reason)
        if ring.kick_fd is not None and ring.kick_fd in port.kick_fds:
            self._unregister(ring.kick_fd)
            del port.kick_fds[ring.kick_fd]
        if ring.err_fd is not None:
            eventfd_signal(ring.err_fd)  # never blocks, whatever the peer did to the eventfd
        ring.stop(reason)  # last: a test thread that waits for ring.error then finds the log and the err eventfd

    def _on_kick(self, port: Port, ring: Vring, fd: int) -> None:
        eventfd_drain(fd)  # never blocks, whatever the peer did to the eventfd
        ring.counters.kicks += 1
        if port.handler is None or not ring.ready:
            return
        if ring.index % 2 == 1:
            self._service_tx(port, ring)
        elif port.stalled:  # buffers were posted: a queue that hit the pause limit pauses senders again
            port.stalled.discard(ring.index)
        # frames held for an rx ring are retried by _drain_held in this loop turn

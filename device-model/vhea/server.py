"""The event loop: one thread, `selectors` over listening sockets, vhost-user connections, kick eventfds
and the control socket. It owns all I/O; handler, device, rings and switch are driven from here.

Nothing a guest or a front-end does may raise out of the loop: errors close that connection or stop that
ring, with a logged reason, and the other ports keep forwarding.

Forwarding is per batch (per kick): a tx ring's available frames are taken at once, one switch decision
serves a run of frames with the same MAC addresses, and each destination ring gets the run in one pass
(classified frame by frame when the port has several queue pairs). The Python datapath (pull_tx,
push_rx_many) is the reference; the native one (_service_tx_native: _datapath.c's tx_pull into an arena and
rx_push from it) does the same with the inner loops in C.

Flow control (pause.py): a receiving port with pause on holds frames for a rx queue without buffers instead of
dropping them, and the tx queue they came from is not serviced until they are delivered or the pause limit
is reached (_hold_begin, _drain_held). Nothing of it runs while nothing is held.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import time
from array import array
from dataclasses import dataclass, field

from . import native
from .classifier import PortClassifier, select_rx_ring
from .coalesce import Coalescer
from .connection import Connection, Disconnected
from .handler import BackendHandler
from .net import ARENA_PREFIX, MAX_FRAME, NET_HDR_LEN, PLAIN_HDR, ArenaTxFrame
from .offload import VHDR, OffloadError, TxFrame, validate
from .pacing import Pacer
from .pause import DEFAULT_MAX_US, HOLD_POLL_S, Backlog, check_max_us
from .protocol import ProtocolError, request_name
from .switch import Switch
from .vring import QueueCounters, RingError, Vring

log = logging.getLogger(__name__)

#: frames taken from one tx ring before other rings get a turn
TX_BUDGET = 256
#: the native datapath copies a tx batch here (header + frame each, 8-byte aligned); a batch stops when full
ARENA_BYTES = 4 << 20
#: the datapath of a Server made without one ("auto": native when it loads); tests set this
DEFAULT_DATAPATH = "auto"
#: idle select timeout; each timeout also polls rings in case a kick was lost
POLL_S = 0.2
#: a client-role port retries its connect this often while the front-end's socket is not there
RECONNECT_S = 1.0


@dataclass(eq=False)
class Port:
    name: str
    path: str
    queue_pairs: int
    listener: socket.socket | None = None
    #: client role: vhea connects to a socket the front-end listens on (QEMU server=on) and reconnects
    client: bool = False
    next_connect: float = 0.0
    connect_attempts: int = 0
    conn: Connection | None = None
    handler: BackendHandler | None = None
    from_guest_frames: int = 0
    from_guest_bytes: int = 0
    to_guest_frames: int = 0
    to_guest_bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    queue_counters: list[QueueCounters] = field(default_factory=list)
    kick_fds: dict[int, Vring] = field(default_factory=dict)
    classifier: PortClassifier = field(init=False)
    coalescer: Coalescer = field(init=False)
    link_up: bool = True
    #: link down the old way (`vhea link down --emulate`): the connection stays, frames are dropped as link_down
    #: and the guest still sees carrier (for front-ends that cannot reconnect, e.g. DPDK's vhost PMD)
    link_emulated: bool = False
    link_changes: int = 0
    #: front-end connections closed unserved because the link was down (QEMU retries every second)
    refused_link_down: int = 0
    pacer: Pacer = field(default_factory=Pacer)
    queue_drops: dict[int, dict[str, int]] = field(default_factory=dict)
    #: 802.3x flow control as the receiver (`vhea pause`, pause.py): frames for a rx queue without buffers are
    #: held and their tx queue paused, for at most pause_max_us
    pause: bool = False
    pause_max_us: int = DEFAULT_MAX_US
    #: times a rx queue of this port had no buffers for a frame and paused its sender
    pause_events: int = 0
    #: times the pause limit was reached (the frames held for this port then dropped as rx_pause_timeout)
    pause_timeouts: int = 0
    #: rx queues that hit the pause limit: frames for them without buffers are dropped until they have buffers
    stalled: set[int] = field(default_factory=set)
    #: times a tx queue of this port was paused by a receiver, and for how long in all (seconds)
    tx_pauses: int = 0
    tx_paused_s: float = 0.0

    def __post_init__(self) -> None:
        self.queue_counters = [QueueCounters() for _ in range(2 * self.queue_pairs)]
        self.classifier = PortClassifier(self.queue_pairs)  # the host's settings: they outlive connections
        self.coalescer = Coalescer(2 * self.queue_pairs)

    def drop(self, reason: str, n: int = 1, queue: int | None = None) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n
        if queue is not None:  # also by queue (rx drops: which queue ran out of buffers)
            qd = self.queue_drops.setdefault(queue, {})
            qd[reason] = qd.get(reason, 0) + n

    @property
    def serves(self) -> bool:
        """Whether a front-end connection is served now: not while the link is down (unless emulated)."""
        return self.link_up or self.link_emulated

    def connection_state(self) -> str:
        if self.conn is not None:
            return "connected"
        if not self.serves:
            return "closed: link down"
        return "connecting" if self.client else "listening"

    def stats(self, held_frames: int = 0, tx_paused: list | tuple = (), now: float = 0.0) -> dict:
        """`held_frames`: frames held for this port now; `tx_paused`: the Backlogs of its tx queues paused now."""
        return {
            "connected": self.conn is not None,
            "connection": self.connection_state(),
            "from_guest_frames": self.from_guest_frames,
            "from_guest_bytes": self.from_guest_bytes,
            "to_guest_frames": self.to_guest_frames,
            "to_guest_bytes": self.to_guest_bytes,
            "drops": dict(sorted(self.drops.items())),
            "classifier": self.classifier.stats(),
            "link": "up" if self.link_up else "down",
            "link_emulated": self.link_emulated,
            "link_changes": self.link_changes,
            "refused_link_down": self.refused_link_down,
            "coalesce": self.coalescer.settings(),
            "pacing": self.pacer.settings(),
            "pause": {"on": self.pause, "max_us": self.pause_max_us, "events": self.pause_events,
                      "timeouts": self.pause_timeouts, "stalled_queues": sorted(self.stalled),
                      "held_frames": held_frames, "tx_pauses": self.tx_pauses,
                      "tx_queues_paused": sorted(b.ring.index for b in tx_paused),
                      "tx_paused_us": round(1e6 * (self.tx_paused_s + sum(now - b.start for b in tx_paused)))},
            "queues": [
                {"index": i, "frames": c.frames, "bytes": c.bytes, "kicks": c.kicks, "calls": c.calls,
                 "drops": dict(sorted(self.queue_drops.get(i, {}).items()))}
                for i, c in enumerate(self.queue_counters)
            ],
        }


class Server:
    """vhost-user back-end for a set of ports joined by a learning switch."""

    def __init__(self, socket_dir: str, ports: list[str], queue_pairs: int = 1,
                 ageing: float = 300.0, client_ports: list[str] | tuple[str, ...] = (),
                 datapath: str | None = None, flow_control: bool = False,
                 pause_max_us: int = DEFAULT_MAX_US, control=None) -> None:
        #: the control API (COMMANDS, handle(server, request)) that answers control commands; None: stats only
        self.control = control
        #: "native" (vhea/_datapath.c) or "python" (the reference); NativeError if native is asked for and absent
        self.datapath = native.resolve(datapath or DEFAULT_DATAPATH)
        self._native = native.MOD if self.datapath == "native" else None
        if self._native is not None:
            assert ARENA_BYTES >= NET_HDR_LEN + MAX_FRAME
            self._arena = bytearray(ARENA_BYTES)
            self._arena_view = memoryview(self._arena)
            self._meta = array("q", bytes(8 * 2 * TX_BUDGET))
            self._runs = array("q", bytes(8 * 4 * TX_BUDGET))
        self.socket_dir = socket_dir
        self.queue_pairs = queue_pairs
        #: the flow control settings of a new port (`vhea serve --flow-control --pause-max-us`)
        self.flow_control = flow_control
        self.pause_max_us = check_max_us(pause_max_us)
        self.ports = {p: self._new_port(p, os.path.join(socket_dir, f"{p}.sock"), client=p in client_ports)
                      for p in ports}
        self.control_path = os.path.join(socket_dir, "control.sock")
        self.switch = Switch(ports, ageing)
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running = False
        self._busy: set[tuple[Port, Vring]] = set()
        self._touched: set[tuple[Port, Vring]] = set()
        self._deferred: set[tuple[Port, Vring]] = set()  # calls held back by coalescing
        self._paced: set[tuple[Port, Vring]] = set()  # tx rings waiting for their port's rate limit
        self._held: dict[tuple[Port, Vring], Backlog] = {}  # tx rings paused by a receiver: their frames
        self._src: tuple[Port, Vring] | None = None  # the tx ring whose batch is being forwarded
        self._hold: Backlog | None = None  # its Backlog once a frame of the batch was held
        self._control: socket.socket | None = None
        self._bound: list[str] = []

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the port sockets and the control socket (the back-end is the server side)."""
        for port in self.ports.values():
            self._open_port(port)
        self._control = self._listen(self.control_path)
        self.sel.register(self._control, selectors.EVENT_READ, ("ctl-listen", None))
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def _new_port(self, name: str, path: str, client: bool) -> Port:
        port = Port(name, path, self.queue_pairs, client=client)
        port.pause, port.pause_max_us = self.flow_control, self.pause_max_us
        return port

    def _open_port(self, port: Port) -> None:
        """Server role: create and watch the port's socket. Client role: connect at the next loop turn."""
        if port.client:
            port.next_connect = 0.0
            return
        port.listener = self._listen(port.path)
        self.sel.register(port.listener, selectors.EVENT_READ, ("listen", port))

    def _close_port(self, port: Port, reason: str) -> None:
        self._disconnect(port, reason, retry=False)
        if port.listener is not None:
            self._unregister(port.listener)
            port.listener.close()
            port.listener = None
            if port.path in self._bound:
                self._bound.remove(port.path)
                try:
                    os.unlink(port.path)
                except OSError:
                    pass

    # ---- ports added and removed at run time (control commands port-add / port-del) ------------------------

    def add_port(self, name: str, path: str | None = None, client: bool = False) -> Port:
        """A new port on the switch: its socket (server role) or its connect loop (client role) starts now."""
        if name in self.ports:
            raise ValueError(f"port {name!r} exists")
        port = self._new_port(name, path or os.path.join(self.socket_dir, f"{name}.sock"), client)
        self._open_port(port)  # raises OSError (socket in use, bad dir) before anything changes
        self.ports[name] = port
        self.switch.ports.append(name)
        log.info("port %s: added (%s role, %s)", name, "client" if client else "server", port.path)
        return port

    def del_port(self, name: str) -> None:
        """Disconnect the port's front-end, free its mappings, remove its socket and flush its MAC entries."""
        port = self.ports.pop(name)
        self._close_port(port, "port removed")
        if name in self.switch.ports:
            self.switch.ports.remove(name)
        self.switch.forget_port(name)
        log.info("port %s: removed", name)

    # ---- link state (control command link-set) ------------------------------------------------------------

    def set_link(self, port: Port, up: bool, emulate: bool = False) -> None:
        """Link down closes the port's vhost-user connection (mappings freed, as for a guest that went away) and
        serves no new one until link up: QEMU's net/vhost-user.c then sets the NIC's link down (the guest gets a
        config interrupt, VIRTIO_NET_S_LINK_UP cleared: no carrier) and, when a connection is served again and
        the handshake replayed, up. With `emulate` the connection stays and frames are dropped as link_down
        (the guest keeps its carrier). Frames from other ports to a port whose link is down are link_down drops.
        """
        was = (port.link_up, port.link_emulated)
        port.link_up = up
        port.link_emulated = emulate and not up
        if was != (port.link_up, port.link_emulated):
            port.link_changes += 1
        if not port.serves:
            if port.conn is not None:
                self._disconnect(port, "link down: vhost-user connection closed; none is served until link up",
                                 retry=False)
            else:
                log.info("port %s: link down: no connection is served until link up", port.name)
        elif not up:
            log.info("port %s: link down (emulated: connection kept, frames dropped as link_down)", port.name)
        else:
            if port.client and port.conn is None:
                port.next_connect = 0.0  # connect at the next loop turn
            log.info("port %s: link up%s", port.name, "" if port.conn is not None else
                     ": serving the next front-end connection")

    def set_pause(self, port: Port, on: bool, max_us: int | None = None) -> None:
        """Flow control of `port` as a receiver (pause.py). Turned off, frames held for it are retried once more
        and dropped as rx_no_buffers if its queue still has no buffers."""
        if max_us is not None:
            port.pause_max_us = check_max_us(max_us)
        port.pause = on
        port.stalled.clear()
        log.info("port %s: flow control (pause) %s, limit %d us", port.name, "on" if on else "off",
                 port.pause_max_us)

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

    def _listen(self, path: str) -> socket.socket:
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket of a back-end that died
            else:
                raise OSError(f"{path} is in use by a running process")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(4)
        s.setblocking(False)
        self._bound.append(path)
        return s

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._running = False
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve_forever(self) -> None:
        self._running = True
        log.info("serving ports %s in %s (%s datapath)", ", ".join(self.ports), self.socket_dir, self.datapath)
        try:
            while self._running:
                self.run_once(0 if self._busy else self._idle_timeout())
        finally:
            self.close()

    def close(self) -> None:
        for port in self.ports.values():
            self._disconnect(port, "shutting down", retry=False)
            if port.listener is not None:
                self._unregister(port.listener)
                port.listener.close()
                port.listener = None
        for key in list(self.sel.get_map().values()):
            if key.data[0] == "ctl":
                self._unregister(key.fileobj)
                key.fileobj.close()
        if self._control is not None:
            self._unregister(self._control)
            self._control.close()
            self._control = None
        for path in self._bound:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._bound = []
        self.sel.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("stopped")

    def _unregister(self, fileobj) -> None:
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # ---- loop ----------------------------------------------------------------------------------------------

    def run_once(self, timeout: float) -> None:
        if any(p.client and p.conn is None and p.serves for p in self.ports.values()):
            now = time.monotonic()
            self._connect_due(now)
            waits = [p.next_connect - now for p in self.ports.values() if p.client and p.conn is None and p.serves]
            if waits:
                timeout = min(timeout, max(0.0, min(waits)))
        events = self.sel.select(timeout)
        for key, _mask in events:
            kind, obj = key.data
            try:
                if kind == "kick":
                    port, ring = obj
                    self._on_kick(port, ring, key.fd)
                elif kind == "conn":
                    self._on_message(obj)
                elif kind == "listen":
                    self._on_accept(obj)
                elif kind == "ctl-listen":
                    self._on_control_accept()
                elif kind == "ctl":
                    self._on_control(key.fileobj, obj)
                elif kind == "wake":
                    try:
                        os.read(self._wake_r, 64)
                    except OSError:
                        pass
            except Exception:  # the loop must survive anything; this is a bug, not a guest error
                log.exception("internal error handling %s event", kind)
        if self._held:
            self._drain_held()
        if self._paced:
            self._release_paced()
        if self._busy:
            busy, self._busy = self._busy, set()
            for port, ring in busy:
                if port.handler is not None and ring.ready:
                    self._service_tx(port, ring)
        elif not events:
            self._poll_all()
        self._flush_calls()

    def _poll_all(self) -> None:
        """Safety net for lost kicks (EVENT_IDX races): look at every ready tx ring now and then."""
        for port in self.ports.values():
            if port.handler is None:
                continue
            for ring in port.handler.device.rings[1::2]:
                if ring.ready:
                    self._service_tx(port, ring)
        self.switch.expire()

    # ---- vhost-user control path ---------------------------------------------------------------------------

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
        port.handler = BackendHandler(port.name, port.queue_pairs)
        for ring, counters in zip(port.handler.device.rings, port.queue_counters, strict=True):
            ring.counters = counters
        port.handler.device.native = self._native
        self.sel.register(port.conn.sock, selectors.EVENT_READ, ("conn", port))

    def _on_message(self, port: Port) -> None:
        conn, handler = port.conn, port.handler
        if conn is None or handler is None:
            return
        try:
            msgs = conn.read()
            self._unwatch_kicks(port)  # before any handler closes or replaces a kick fd (epoll keeps stale ones)
            for msg in msgs:
                log.debug("port %s: %s size %d fds %d", port.name, request_name(msg.request), msg.header.size,
                          len(msg.fds))
                reply = handler.handle(msg)
                if reply is not None:
                    conn.send(reply)
            self._watch_kicks(port)
        except Disconnected as e:
            self._disconnect(port, f"front-end disconnected ({e})")
        except ProtocolError as e:
            log.warning("port %s: protocol error: %s; closing the connection", port.name, e)
            self._disconnect(port, "protocol error")
        except Exception:
            log.exception("port %s: internal error in the request handler; closing the connection", port.name)
            self._disconnect(port, "internal error")

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

    # ---- data path -----------------------------------------------------------------------------------------

    def _stop_ring(self, port: Port, ring: Vring, reason: str) -> None:
        log.warning("port %s: queue %d stopped: %s", port.name, ring.index, reason)
        if ring.kick_fd is not None and ring.kick_fd in port.kick_fds:
            self._unregister(ring.kick_fd)
            del port.kick_fds[ring.kick_fd]
        if ring.err_fd is not None:
            try:
                os.eventfd_write(ring.err_fd, 1)
            except OSError:
                pass
        ring.stop(reason)  # last: a test thread that waits for ring.error then finds the log and the err eventfd

    def _on_kick(self, port: Port, ring: Vring, fd: int) -> None:
        try:
            os.eventfd_read(fd)
        except (BlockingIOError, OSError):
            pass
        ring.counters.kicks += 1
        if port.handler is None or not ring.ready:
            return
        if ring.index % 2 == 1:
            self._service_tx(port, ring)
        elif port.stalled:  # buffers were posted: a queue that hit the pause limit pauses senders again
            port.stalled.discard(ring.index)
        # frames held for an rx ring are retried by _drain_held in this loop turn

    def _service_tx(self, port: Port, ring: Vring) -> None:
        assert port.handler is not None
        if self._held and (port, ring) in self._held:
            return  # paused by a receiver: _drain_held services it again when its held frames are gone
        if port.pacer.rate_bps and not port.pacer.ready(time.monotonic()):
            self._paced.add((port, ring))  # frames wait in the guest's ring: back-pressure, not loss
            return
        if self._native is not None:
            self._service_tx_native(port, ring)
            return
        device = port.handler.device
        frames: list[bytes] = []
        # paced: a batch that roughly fits the tokens (frame sizes are known only after the pull)
        budget = min(TX_BUDGET, max(1, int(port.pacer.tokens) // 1514)) if port.pacer.rate_bps else TX_BUDGET
        try:
            device.pull_tx(ring, frames, port.drops, budget)
            more = ring.pending(fence=True) > 0
        except RingError as e:
            self._stop_ring(port, ring, str(e))
            more = False
        if more:
            self._busy.add((port, ring))
        if ring.error is None:
            self._touched.add((port, ring))
        if not frames:
            return
        nbytes = sum(map(len, frames))
        if port.pacer.rate_bps:
            port.pacer.consume(nbytes)
        port.from_guest_frames += len(frames)
        port.from_guest_bytes += nbytes
        # one switch decision per run of plain frames with the same MAC addresses, one rx pass per ring
        i, n = 0, len(frames)
        self._src = (port, ring)
        try:
            while i < n:
                f = frames[i]
                if type(f) is not bytes:  # a TxFrame (offload request): frame by frame
                    self._forward(port, f)
                    i += 1
                    continue
                key = f[:12]
                j = i + 1
                while j < n and type(frames[j]) is bytes and frames[j].startswith(key):
                    j += 1
                self._forward_run(port, f, i, j, frames)
                i = j
        finally:
            self._src = self._hold = None

    # ---- the native datapath: the same semantics per batch (the Python methods above are the reference) ------

    def _service_tx_native(self, port: Port, ring: Vring) -> None:
        """A tx batch through _datapath.c: chains walked and checked, frames copied into the arena, used ring
        written, all in one call; then one switch decision per run of frames with the same MAC addresses and
        one rx_push call per destination ring. Frames with offload requests take the reference path."""
        device = port.handler.device
        budget = min(TX_BUDGET, max(1, int(port.pacer.tokens) // 1514)) if port.pacer.rate_bps else TX_BUDGET
        meta, runs, arena = self._meta, self._runs, self._arena
        hl = device.hdr_len
        nframes = nruns = 0
        try:
            consumed, nframes, nbytes, runts, oversize, nruns, err = self._native.tx_pull(
                device.mem.native(self._native), ring._desc, ring._avail, ring._used, ring.num, ring.last_avail_idx,
                ring.used_idx, ring.event_idx, ring.indirect, budget, hl, arena, meta, runs)
            if err is not None:
                raise RingError(err)
            ring.last_avail_idx = (ring.last_avail_idx + consumed) & 0xFFFF
            ring.used_idx = (ring.used_idx + consumed) & 0xFFFF
            if runts:
                port.drop("tx_runt", runts)
            if oversize:
                port.drop("tx_oversize", oversize)
            offload: dict[int, TxFrame] = {}
            for r in range(nruns):  # offload requests are checked before anything is counted (as pull_tx)
                if runs[4 * r + 2]:
                    first = runs[4 * r]
                    off, ln = meta[2 * first], meta[2 * first + 1]
                    vhdr = VHDR.unpack_from(arena, off - hl)
                    if vhdr[1] and ln > ARENA_PREFIX:  # GSO: only the headers leave the arena (ArenaTxFrame)
                        data = ArenaTxFrame(self._arena_view[off:off + ARENA_PREFIX])
                        data.length = ln
                        data.src = (arena, meta, first)
                    else:
                        data = TxFrame(self._arena_view[off:off + ln])
                    data.vhdr = vhdr
                    try:
                        validate(data, device.features)
                    except OffloadError as e:
                        port.drop(e.reason)
                        nframes -= 1
                        nbytes -= ln
                        data = None
                    offload[r] = data
            ring.counters.frames += nframes
            ring.counters.bytes += nbytes
            more = ring.pending(fence=True) > 0
        except RingError as e:
            self._stop_ring(port, ring, str(e))
            more = False
            nframes = nruns = 0
        if more:
            self._busy.add((port, ring))
        if ring.error is None:
            self._touched.add((port, ring))
        if not nframes and not nruns:
            return
        if port.pacer.rate_bps:
            port.pacer.consume(nbytes)
        port.from_guest_frames += nframes
        port.from_guest_bytes += nbytes
        arena_view = self._arena_view
        self._src = (port, ring)
        try:
            for r in range(nruns):
                first, count = runs[4 * r], runs[4 * r + 1]
                if runs[4 * r + 2]:
                    data = offload[r]
                    if data is not None:
                        self._forward(port, data)
                    continue
                if not port.link_up:
                    port.drop("link_down", count)
                    continue
                off = meta[2 * first]
                self._forward_run(port, bytes(arena_view[off:off + 12]), first, first + count)
        finally:
            self._src = self._hold = None

    def _forward_run(self, port: Port, macs: bytes, start: int, end: int, frames: list[bytes] | None = None) -> None:
        """_forward for a run of plain frames that share their MAC addresses (`macs`: the first 12 bytes), taken
        from `frames`, or, with the native datapath, from the arena (frames None)."""
        if not port.link_up:
            port.drop("link_down", end - start)
            return
        dsts = self.switch.destinations(macs, port.name)
        if not dsts:
            port.drop("dst_is_ingress_port", end - start)
            return
        for name in dsts:
            self._deliver_run(self.ports[name], start, end, frames)

    def _frame(self, i: int, frames: list[bytes] | None) -> bytes:
        if frames is not None:
            return frames[i]
        off = self._meta[2 * i]
        return bytes(self._arena_view[off:off + self._meta[2 * i + 1]])

    def _deliver_run(self, port: Port, start: int, end: int, frames: list[bytes] | None = None) -> None:
        """_deliver for frames[start:end] (or meta[start:end] of the arena: native datapath)."""
        if not port.link_up:
            port.drop("link_down", end - start)
            return
        if port.handler is None:
            port.drop("not_connected", end - start)
            return
        device = port.handler.device
        rings = device.rings
        if len(rings) <= 2:  # one queue pair: nothing to classify (select_rx_ring)
            ring = rings[0] if rings and rings[0].ready else None
            self._push_run(port, device, ring, start, end, frames)
            return
        if self._hold is not None:  # held: classified when delivered (counted once)
            self._hold_frames(port, start, end, frames)
            return
        classifier = port.classifier
        cur = None
        seg = start
        for i in range(start, end):
            ring = select_rx_ring(classifier, rings, self._frame(i, frames))
            if ring is not cur:
                if i > seg:
                    self._push_run(port, device, cur, seg, i, frames)
                    if self._hold is not None:
                        self._hold_frames(port, i, end, frames)
                        return
                cur, seg = ring, i
        self._push_run(port, device, cur, seg, end, frames)

    def _push_run(self, port: Port, device, ring: Vring | None, start: int, end: int,
                  frames: list[bytes] | None) -> None:
        if ring is None:
            port.drop("rx_queue_not_ready", end - start)
            return
        if self._hold is not None:  # an earlier frame of this batch is held: the rest waits behind it
            self._hold_frames(port, start, end, frames)
            return
        stop = port.pause and ring.index not in port.stalled  # flow control: stop at a frame without buffers
        if frames is None:
            done, nbytes, nobuf, small, err, at = device.rx_native(ring, self._arena, self._meta, start, end,
                                                                   PLAIN_HDR, stop)
        else:
            done, nbytes, nobuf, small, err, at = device.push_rx_many(ring, frames, start, end, stop)
        if done:
            port.to_guest_frames += done
            port.to_guest_bytes += nbytes
            self._touched.add((port, ring))
            if port.stalled:
                port.stalled.discard(ring.index)
        if nobuf:
            if stop:  # frame `at` found no buffers: it and the rest of the batch are held, its tx queue paused
                self._hold_begin(port, ring)
                self._hold_frames(port, at, end, frames)
            else:
                port.drop("rx_pause_timeout" if ring.index in port.stalled else "rx_no_buffers", nobuf,
                          queue=ring.index)
        if small:
            port.drop("rx_buffer_too_small", small, queue=ring.index)
        if err is not None:
            self._stop_ring(port, ring, err)
            port.drop("rx_ring_error", queue=ring.index)
            for i in range(at + 1, end):  # the rest frame by frame (another ring, or a drop)
                self._deliver(port, self._frame(i, frames))

    def _forward(self, ingress: Port, frame: bytes) -> None:
        if not ingress.link_up:
            ingress.drop("link_down")
            return
        dsts = self.switch.destinations(frame, ingress.name)
        if not dsts:
            ingress.drop("dst_is_ingress_port")
            return
        for name in dsts:
            self._deliver(self.ports[name], frame)

    def _deliver(self, port: Port, frame: bytes) -> None:
        if self._hold is not None:  # an earlier frame of this batch is held: this one waits behind it
            self._hold.add(port.name, frame)
            return
        ring = self._push_one(port, frame)
        if ring is not None:
            self._hold_begin(port, ring).add(port.name, frame)

    def _push_one(self, port: Port, frame: bytes) -> Vring | None:
        """One frame into `port` (classified), or dropped with a reason; the rx ring when the frame found no
        buffers there, nothing of it was written, and the port pauses its senders (the caller holds it)."""
        if not port.link_up:
            port.drop("link_down")
            return None
        if port.handler is None:
            port.drop("not_connected")
            return None
        device = port.handler.device
        ring = select_rx_ring(port.classifier, device.rings, frame)
        if ring is None:
            port.drop("rx_queue_not_ready")
            return None
        hold = port.pause and ring.index not in port.stalled
        try:
            if hold and not ring.pending():
                return ring
            reason = device.push_rx(ring, frame)
        except RingError as e:
            self._stop_ring(port, ring, str(e))
            port.drop("rx_ring_error", queue=ring.index)
            return None
        if reason is not None:
            if reason == "rx_no_buffers":
                if hold and device.whole(frame):
                    return ring
                if ring.index in port.stalled:
                    reason = "rx_pause_timeout"
            port.drop(reason, queue=ring.index)
            return None
        port.to_guest_frames += 1
        port.to_guest_bytes += len(frame)
        self._touched.add((port, ring))
        if port.stalled:
            port.stalled.discard(ring.index)
        return None

    # ---- flow control (pause.py): held frames and paused tx queues ------------------------------------------

    def _hold_begin(self, port: Port, ring: Vring) -> Backlog:
        """`port`'s rx `ring` has no buffers for a frame of the batch being forwarded, and `port` pauses its
        senders: the batch's tx queue is paused (_service_tx skips it) and the rest of the batch is held."""
        assert self._src is not None and self._hold is None
        src, tx = self._src
        now = time.monotonic()
        self._hold = bl = Backlog(src, tx, now, deadline=now + port.pause_max_us / 1e6, blocked=(port, ring))
        self._held[(src, tx)] = bl
        port.pause_events += 1
        src.tx_pauses += 1
        return bl

    def _hold_frames(self, port: Port, start: int, end: int, frames: list[bytes] | None) -> None:
        add = self._hold.entries.append
        name = port.name
        for i in range(start, end):
            add((name, self._frame(i, frames)))  # from the arena: a copy (bytes)

    def _drain_held(self) -> None:
        """Each loop turn while frames are held: deliver what the receivers take now, in order per tx queue;
        drop what waited past the receiver's pause limit; service a tx queue again when its frames are gone."""
        now = time.monotonic()
        for key, bl in list(self._held.items()):
            entries = bl.entries
            while entries:
                if bl.blocked is not None:  # still no buffers where the first frame waits: nothing to do yet
                    port, ring = bl.blocked
                    if now < bl.deadline and port.pause and ring.index not in port.stalled and ring.ready:
                        try:
                            if not ring.pending():
                                break
                        except RingError:
                            pass  # _push_one meets it and stops the ring
                    bl.blocked = None
                name, frame = entries[0]
                port = self.ports.get(name)
                if port is None:  # removed while its frames were held
                    bl.port.drop("dst_removed")
                    entries.popleft()
                    continue
                ring = self._push_one(port, frame)
                if ring is None:  # delivered (or dropped for another reason)
                    entries.popleft()
                    continue
                bl.blocked = (port, ring)
                bl.deadline = bl.start + port.pause_max_us / 1e6
                if now < bl.deadline:
                    break
                # the limit: this frame and every later one for this queue without buffers are dropped
                bl.blocked = None
                port.pause_timeouts += 1
                port.stalled.add(ring.index)
                if port.pause_timeouts == 1 or port.pause_timeouts % 100 == 0:
                    log.info("port %s: queue %d kept a tx queue paused for %d us: pause limit reached (%d times "
                             "so far); frames for it are dropped until it posts rx buffers", port.name, ring.index,
                             round((now - bl.start) * 1e6), port.pause_timeouts)
            if not entries:
                del self._held[key]
                src = bl.port
                src.tx_paused_s += now - bl.start
                if src.handler is not None and bl.ring.ready:
                    self._busy.add((src, bl.ring))

    def _flush_calls(self) -> None:
        """One call per touched ring per loop turn, or later if the port's coalescing settings hold it back."""
        touched, self._touched = self._touched, set()
        if self._deferred:
            touched |= self._deferred
            self._deferred = set()
        now = time.monotonic()
        for port, ring in touched:
            if ring.error is None and ring.mapped:
                if not port.coalescer.due(ring, now):
                    self._deferred.add((port, ring))
                    continue
                try:
                    ring.call()
                except Exception:
                    log.exception("call on ring %d", ring.index)

    def _idle_timeout(self) -> float:
        """The select timeout when no ring is busy: the poll interval, or sooner for a held-back call."""
        timeout = POLL_S
        if self._deferred:
            now = time.monotonic()
            for port, ring in self._deferred:
                d = port.coalescer.deadline(ring)
                if d is not None:
                    timeout = min(timeout, max(0.0, d - now))
        if self._paced:
            now = time.monotonic()
            for port, _ring in self._paced:
                timeout = min(timeout, max(0.0, port.pacer.ready_at() - now))
        if self._held:
            now = time.monotonic()
            timeout = min(timeout, HOLD_POLL_S, *(max(0.0, b.deadline - now) for b in self._held.values()))
        return timeout

    def _release_paced(self) -> None:
        """Tx rings whose port's token bucket is out of debt get serviced again."""
        now = time.monotonic()
        for port, ring in [x for x in self._paced if x[0].pacer.ready_at() <= now]:
            self._paced.discard((port, ring))
            self._busy.add((port, ring))

    # ---- control socket ------------------------------------------------------------------------------------

    def _on_control_accept(self) -> None:
        assert self._control is not None
        try:
            sock, _ = self._control.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, ("ctl", bytearray()))

    def _on_control(self, sock: socket.socket, buf: bytearray) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or len(buf) > 1 << 20:
            self._unregister(sock)
            sock.close()
            return
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            reply = self.control_request(line)
            try:
                sock.setblocking(True)
                sock.settimeout(2.0)
                sock.sendall(json.dumps(reply).encode() + b"\n")
                sock.setblocking(False)
            except OSError:
                self._unregister(sock)
                sock.close()
                return

    def control_request(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except ValueError as e:
            return {"error": f"bad JSON: {e}"}
        if not isinstance(req, dict):
            return {"error": "request must be a JSON object"}
        cmd = req.get("cmd")
        if cmd == "stats":
            return self.stats()
        if cmd == "ping":
            return {"ok": True, "time": time.time()}
        if self.control is not None and cmd in self.control.COMMANDS:
            return self.control.handle(self, req)
        return {"error": f"unknown cmd {cmd!r}"}

    def stats(self) -> dict:
        held: dict[str, int] = {}
        paused: dict[str, list[Backlog]] = {}
        for bl in list(self._held.values()):  # list(): safe against the loop thread (tests ask from another)
            paused.setdefault(bl.port.name, []).append(bl)
            for name, _f in list(bl.entries):
                held[name] = held.get(name, 0) + 1
        now = time.monotonic()
        return {
            "datapath": self.datapath,
            "ports": {name: p.stats(held.get(name, 0), paused.get(name, ()), now)
                      for name, p in self.ports.items()},
            "switch": {"fdb": self.switch.table()},
        }

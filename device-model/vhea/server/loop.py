"""The event loop: one thread, `selectors` over listening sockets, vhost-user connections, kick eventfds
and the control socket. It owns all I/O; handler, device, rings and switch are driven from here.

Nothing a guest or a front-end does may raise out of the loop: errors close that connection or stop that
ring, with a logged reason, and the other ports keep forwarding.

Server is put together from one mixin per concept, each in its module of this package: ports and link state
(ports.py), the vhost-user session (session.py), the tx service of both datapaths (txservice.py), tap ports
(tapservice.py), forwarding and rx delivery with flow control (delivery.py), calls and pacing timers
(notify.py), the control socket and stats (control_socket.py). This module holds the state they share and the
loop that drives them; the decisions of forwarding and flow control are pure code below the server
(forwarding.py, pause.py).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time

from .. import native, ratelimit
from ..pause import DEFAULT_MAX_US, HOLD_POLL_S, Backlog, FlowControl, check_max_us
from ..switch import Switch
from ..tap import default_ifname
from ..vring import Vring
from .control_socket import ControlAPI, ControlEndpoint
from .delivery import Delivery
from .notify import Notifications
from .port import Port, PortRing
from .ports import PortLifecycle
from .session import VhostSession
from .tapservice import TapService
from .txservice import TxService

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package

#: the datapath of a Server made without one ("auto": native when it loads); tests set this
DEFAULT_DATAPATH = "auto"
#: port sockets: the owner and its group may connect (QEMU as another user: `vhea serve --socket-mode/-group`)
DEFAULT_SOCKET_MODE = 0o660
#: the control socket: its owner only (and root); each connection's SO_PEERCRED is checked too
CONTROL_SOCKET_MODE = 0o600
#: idle select timeout; each timeout also polls rings in case a kick was lost
POLL_S = 0.2


class Server(PortLifecycle, VhostSession, TxService, TapService, Delivery, Notifications, ControlEndpoint):
    """vhost-user back-end for a set of ports joined by a learning switch."""

    def __init__(self, socket_dir: str, ports: list[str], queue_pairs: int = 1,
                 ageing: float = 300.0, client_ports: list[str] | tuple[str, ...] = (),
                 datapath: str | None = None, flow_control: bool = False,
                 pause_max_us: int = DEFAULT_MAX_US, control: ControlAPI | None = None,
                 tap_ports: dict[str, str | None] | None = None, socket_mode: int = DEFAULT_SOCKET_MODE,
                 socket_group: int | None = None) -> None:
        """`tap_ports`: tap ports made at bind(), name -> TAP device name (None: the default "vh-" + name).
        `socket_mode`, `socket_group`: the permissions and group (None: ours) of the port sockets; the control
        socket is always CONTROL_SOCKET_MODE, owner only (docs/device-model.md, "Who may connect")."""
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        #: "native" (vhea/_datapath.c) or "python" (the reference); NativeError if native is asked for and absent
        self.datapath = native.resolve(datapath or DEFAULT_DATAPATH)
        self._native = native.MOD if self.datapath == "native" else None
        if self._native is not None:
            self._init_arena()
        self.socket_dir = socket_dir
        self.queue_pairs = queue_pairs
        #: the flow control settings of a new port (`vhea serve --flow-control --pause-max-us`)
        self.flow_control = flow_control
        self.pause_max_us = check_max_us(pause_max_us)
        self.ports = {p: self._new_port(p, os.path.join(socket_dir, f"{p}.sock"), client=p in client_ports)
                      for p in ports}
        for name, ifname in (tap_ports or {}).items():
            if name in self.ports:
                raise ValueError(f"port {name!r} is given twice")
            self.ports[name] = self._new_port(name, "", False, ifname or default_ifname(name))
        ratelimit.install(self.ports)  # per-port warnings: at most a burst per port and window, the rest counted
        self.control_path = os.path.join(socket_dir, "control.sock")
        #: the control API of the requests beyond stats and ping (vhea.control); None: only those two
        self.control = control
        self.switch = Switch(list(self.ports), ageing)
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running = False
        self._busy: set[PortRing] = set()
        self._touched: set[PortRing] = set()
        self._deferred: set[PortRing] = set()  # calls held back by coalescing
        self._paced: set[PortRing] = set()  # tx rings waiting for their port's rate limit
        self._tap_busy: set = set()  # tap ports to read at this pass (readable, or their budget ran out)
        self._flow = FlowControl()  # tx rings paused by a receiver: their frames
        self._src: PortRing | None = None  # the tx ring whose batch is being forwarded
        self._hold: Backlog | None = None  # its Backlog once a frame of the batch was held
        self._control: socket.socket | None = None
        self.control_refused = 0  # control connections of another user, refused (SO_PEERCRED)
        self._bound: list[str] = []

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the port sockets and the control socket (the back-end is the server side)."""
        for port in self.ports.values():
            self._open_port(port)
        self._control = self._listen(self.control_path, CONTROL_SOCKET_MODE, -1)
        self.sel.register(self._control, selectors.EVENT_READ, ("ctl-listen", None))
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

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
                self.run_once(0 if self._busy or self._tap_busy else self._idle_timeout())
        finally:
            self.close()

    def close(self) -> None:
        for port in self.ports.values():
            self._disconnect(port, "shutting down", retry=False)
            self._close_tap(port)
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

    # ---- the loop ----------------------------------------------------------------------------------------

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
                elif kind == "tap":
                    self._tap_busy.add(obj)
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
                if kind in ("kick", "conn"):
                    self._internal_error(obj[0] if kind == "kick" else obj, f"{kind} event")
                else:
                    log.exception("internal error handling %s event", kind)
        if self._tap_busy:
            self._service_taps()
        if self._flow:
            self._drain_held()
        if self._paced:
            self._release_paced()
        if self._busy:
            busy, self._busy = self._busy, set()
            for port, ring in busy:
                if port.handler is not None and ring.ready:
                    self._guarded_tx(port, ring)
        elif not events and not self._tap_busy:
            self._poll_all()
        self._flush_calls()

    def _poll_all(self) -> None:
        """Safety net for lost kicks (EVENT_IDX races): look at every ready tx ring now and then."""
        for port in self.ports.values():
            if port.handler is None:
                continue
            for ring in port.handler.device.rings[1::2]:
                if port.handler is not None and ring.ready:
                    self._guarded_tx(port, ring)
        self.switch.expire()

    def _guarded_tx(self, port: Port, ring: Vring) -> None:
        """_service_tx with the last line of defence: a bug on one port's path closes that port only."""
        try:
            self._service_tx(port, ring)
        except Exception:
            self._internal_error(port, f"tx service of queue {ring.index}")

    def _internal_error(self, port: Port, where: str) -> None:
        """An unexpected exception (a bug, not a guest error) on `port`'s path: logged, and that port's
        connection closed and counted as "internal error"; the loop and the other ports go on."""
        log.exception("port %s: internal error in the %s; closing the connection", port.name, where)
        try:
            self._close_peer(port, "internal error")
        except Exception:
            log.exception("port %s: internal error while closing the connection", port.name)

    def _idle_timeout(self) -> float:
        """The select timeout when no ring is busy: the poll interval, or sooner for a held-back call."""
        timeout = self._notify_timeout(POLL_S)
        if self._flow:
            now = time.monotonic()
            timeout = min(timeout, HOLD_POLL_S, max(0.0, self._flow.next_deadline() - now))
        return timeout

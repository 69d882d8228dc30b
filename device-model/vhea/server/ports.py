"""Port lifecycle and link state: ports made at start and added or removed at run time (control commands
port-add / port-del), vhost-user ports and tap ports (their TAP device: tapservice.py), their listening
sockets (a stale one of a dead back-end replaced), link up/down
(link-set) and flow control settings (pause). A Server mixin (loop.py).

The link status bit a guest sees (VIRTIO_NET_S_LINK_UP) belongs to QEMU, which a vhost-user back-end cannot
set: link down therefore closes the port's connection (QEMU then clears the bit), or, emulated, keeps it and
drops the port's frames as link_down.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket

from ..pause import check_max_us
from ..switch import Switch
from ..tap import default_ifname
from .port import Port

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package


class PortLifecycle:
    """Ports, their sockets and link state (mixed into Server). Uses _disconnect (session.py), _open_tap and
_close_tap (tapservice.py) and _unregister (loop.py)."""

    # the Server's state this mixin uses (set in loop.Server.__init__)
    socket_dir: str
    queue_pairs: int
    flow_control: bool
    pause_max_us: int
    ports: dict[str, Port]
    sel: selectors.BaseSelector
    switch: Switch
    _bound: list[str]
    socket_mode: int
    socket_group: int | None

    def _new_port(self, name: str, path: str, client: bool, ifname: str | None = None) -> Port:
        """A vhost-user port on socket `path`, or with `ifname` a tap port (one queue pair, no socket)."""
        port = Port(name, path, 1 if ifname is not None else self.queue_pairs, client=client, ifname=ifname)
        # flow control holds frames for a guest's rx queue; a tap takes them or drops them (tapservice.py)
        port.pause, port.pause_max_us = self.flow_control and ifname is None, self.pause_max_us
        return port

    def _open_port(self, port: Port) -> None:
        """Server role: create and watch the port's socket. Client role: connect at the next loop turn. A tap
        port: create its TAP device."""
        if port.ifname is not None:
            self._open_tap(port)
            return
        if port.client:
            port.next_connect = 0.0
            return
        port.listener = self._listen(port.path)
        self.sel.register(port.listener, selectors.EVENT_READ, ("listen", port))

    def _close_port(self, port: Port, reason: str) -> None:
        self._disconnect(port, reason, retry=False)
        self._close_tap(port)
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

    def add_tap_port(self, name: str, ifname: str | None = None) -> Port:
        """A new tap port: its TAP device IFNAME (default "vh-" + name) is created now, DOWN and without an
        address (whoever owns the peer moves it into a namespace and configures it); OSError if it cannot be."""
        if name in self.ports:
            raise ValueError(f"port {name!r} exists")
        port = self._new_port(name, "", False, ifname or default_ifname(name))
        self._open_port(port)
        self.ports[name] = port
        self.switch.ports.append(name)
        log.info("port %s: added (tap %s)", name, port.ifname)
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

    def _listen(self, path: str, mode: int | None = None, group: int | None = None) -> socket.socket:
        """A listening socket at `path` with permissions `mode` (default: the port socket mode) and `group`
        (default: the port socket group, None: ours), set between bind and listen: nobody connects earlier."""
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
        self._bound.append(path)
        try:
            if group is None:
                group = self.socket_group
            if group is not None:
                os.chown(path, -1, group)
            os.chmod(path, self.socket_mode if mode is None else mode)
        except OSError:
            s.close()
            raise
        s.listen(4)
        s.setblocking(False)
        return s

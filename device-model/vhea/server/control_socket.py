"""The control socket: newline-framed JSON requests and replies (`vhea stats`, `vhea rule`, ...), the built-in
requests (stats, ping) answered here and the rest passed to the control API the Server was given (vhea.control,
injected so that the server never imports the layer above it). A Server mixin (loop.py).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Collection
from typing import Any, Protocol

from ..pause import FlowControl
from ..switch import Switch
from .port import Port

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package


class ControlAPI(Protocol):
    """The server-side control API (the module vhea.control satisfies it): the request names it answers and
    the function that answers them."""

    COMMANDS: Collection[str]

    def handle(self, server: Any, request: dict) -> dict: ...


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), None if it cannot be read."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[1]


class ControlEndpoint:
    """The control socket and its requests (mixed into Server). Uses _unregister (loop.py)."""

    # the Server's state this mixin uses (set in loop.Server.__init__)
    datapath: str
    control: ControlAPI | None
    ports: dict[str, Port]
    sel: selectors.BaseSelector
    switch: Switch
    _control: socket.socket | None
    control_refused: int
    _flow: FlowControl

    def _on_control_accept(self) -> None:
        assert self._control is not None
        try:
            sock, _ = self._control.accept()
        except (BlockingIOError, InterruptedError):
            return
        uid = peer_uid(sock)
        if uid not in (0, os.geteuid()):  # the socket is 0600; this also holds if its mode was widened
            sock.close()
            self.control_refused += 1
            log.warning("control connection of uid %s refused (only uid %d or root may use it; %d refused)",
                        uid, os.geteuid(), self.control_refused)
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
        """One request line: the built-in requests here, those of the control API there, else an error."""
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
        control = self.control
        if control is not None and cmd in control.COMMANDS:
            return control.handle(self, req)
        return {"error": f"unknown cmd {cmd!r}"}

    def stats(self) -> dict:
        """The `stats` reply: the datapath, every port's counters and settings, the switch's table."""
        held = self._flow.summary()
        now = time.monotonic()
        return {
            "datapath": self.datapath,
            "ports": {name: p.stats(held.frames.get(name, 0), held.paused.get(name, ()), now)
                      for name, p in self.ports.items()},
            "switch": {"fdb": self.switch.table(), "fdb_max": self.switch.max_entries,
                       "fdb_not_learned": self.switch.not_learned},
            "control": {"refused": self.control_refused},
        }

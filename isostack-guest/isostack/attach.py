"""Attachment protocol between the front-end and isostackd over a unix SOCK_SEQPACKET socket (sans-I/O part).

One datagram each way, JSON, with file descriptors in SCM_RIGHTS:

    app -> isostackd   {"type": "attach", "version": 1, "geometry": {...}, "pid": P, "name": N}
                       fds: [memfd (sealed against shrinking), doorbell eventfd]
    isostackd -> app   {"type": "attached", "app": ID, "cpu": C, "pid": P, "locks": bool}, fds: [kick eventfd]
                   or  {"type": "error", "message": "..."} and the connection is closed

After that the connection carries nothing; its closing (the application exited or was killed) is what
tells the dispatcher to release the application's sockets and memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .layout import VERSION, Geometry, LayoutError

DEFAULT_SOCKET = "/run/isostack/isostackd.sock"
MAX_MESSAGE = 4096


class AttachError(Exception):
    pass


@dataclass(frozen=True)
class Hello:
    geometry: Geometry
    pid: int
    name: str

    def encode(self) -> bytes:
        msg = {"type": "attach", "version": VERSION, "geometry": self.geometry.to_dict(), "pid": self.pid,
               "name": self.name}
        return json.dumps(msg).encode()


def parse_hello(data: bytes, nfds: int) -> Hello:
    """Validate an attach request; raises AttachError with the reason to send back."""
    try:
        msg = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AttachError(f"attach request is not JSON: {e}") from None
    if not isinstance(msg, dict) or msg.get("type") != "attach":
        raise AttachError("expected an attach request")
    if msg.get("version") != VERSION:
        raise AttachError(f"protocol version {msg.get('version')!r} not supported (want {VERSION})")
    if nfds != 2:
        raise AttachError(f"attach needs 2 fds (memfd, doorbell eventfd), got {nfds}")
    geo = msg.get("geometry")
    if not isinstance(geo, dict):
        raise AttachError("geometry missing")
    try:
        geometry = Geometry.from_dict(geo)
    except LayoutError as e:
        raise AttachError(str(e)) from None
    pid = msg.get("pid", 0)
    name = msg.get("name", "")
    if not isinstance(pid, int) or not isinstance(name, str):
        raise AttachError("bad pid/name")
    return Hello(geometry, pid, name[:64])


def encode_reply(**fields) -> bytes:
    return json.dumps(fields).encode()


def parse_reply(data: bytes) -> dict:
    try:
        msg = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AttachError(f"bad reply from isostackd: {e}") from None
    if not isinstance(msg, dict):
        raise AttachError("bad reply from isostackd")
    if msg.get("type") == "error":
        raise AttachError(f"isostackd refused the attachment: {msg.get('message')}")
    if msg.get("type") != "attached":
        raise AttachError(f"unexpected reply from isostackd: {msg!r}")
    return msg

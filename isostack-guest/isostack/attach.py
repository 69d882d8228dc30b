"""Attachment protocol between the front-end and isostackd over a unix SOCK_SEQPACKET socket (sans-I/O part).

One datagram each way, JSON, with file descriptors in SCM_RIGHTS:

    app -> isostackd   {"type": "attach", "version": 1, "geometry": {...}, "pid": P, "name": N}
                       fds: [memfd (sealed against shrinking), one doorbell eventfd per notification ring]
    isostackd -> app   {"type": "attached", "app": ID, "cpu": C, "pid": P, "locks": bool, "instance": K,
                        "queues": [rx queues this instance owns] or null (all)}, fds: [kick eventfd]
                   or  {"type": "error", "message": "..."} and the connection is closed

Instances: `isostackd --instance K` listens on instance_path(base, K): the base path itself for K = 0 (so a
single dispatcher keeps the historic path) and "<stem>-K<suffix>" next to it otherwise
(/run/isostack/isostackd-1.sock).  A front-end discovers the running instances by listing that directory
(`discover`) and attaches to each of them separately: one memfd, one kick and one attach connection each.

After that the connection carries only readiness registrations (one at a time per application):

    app -> isostackd   {"type": "watch", "sock": S}, fds: [eventfd]   written on every event of socket S
                       {"type": "unwatch", "sock": S}
    isostackd -> app   {"type": "watching", "sock": S} or {"type": "error", "message": "..."}

Its closing (the application exited or was killed) is what tells the dispatcher to release the
application's sockets and memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .layout import VERSION, Geometry, LayoutError

DEFAULT_SOCKET = "/run/isostack/isostackd.sock"
MAX_MESSAGE = 4096


MAX_INSTANCES = 16


def instance_path(base: str, k: int) -> str:
    """Attach socket of instance k: `base` for 0, "<stem>-k<suffix>" beside it otherwise."""
    if k == 0:
        return base
    stem, suffix = os.path.splitext(base)
    return f"{stem}-{k}{suffix}"


def discover(base: str) -> list[tuple[int, str]]:
    """[(instance, path)] of the attach sockets that exist for `base`, by instance number."""
    stem, suffix = os.path.splitext(base)
    directory = os.path.dirname(base) or "."
    pattern = re.compile(re.escape(os.path.basename(stem)) + r"-([1-9][0-9]*)" + re.escape(suffix) + "$")
    found = [(0, base)] if os.path.exists(base) else []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) < MAX_INSTANCES:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


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


def _loads(data: bytes, what: str):
    """JSON from an untrusted peer: any failure (deep nesting raises RecursionError) is an AttachError."""
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise AttachError(f"{what} is not JSON: {e}") from None
    except RecursionError:
        raise AttachError(f"{what} is nested too deeply") from None


def parse_hello(data: bytes, nfds: int) -> Hello:
    """Validate an attach request; raises AttachError with the reason to send back."""
    msg = _loads(data, "attach request")
    if not isinstance(msg, dict) or msg.get("type") != "attach":
        raise AttachError("expected an attach request")
    if msg.get("version") != VERSION:
        raise AttachError(f"protocol version {msg.get('version')!r} not supported (want {VERSION})")
    geo = msg.get("geometry")
    if not isinstance(geo, dict):
        raise AttachError("geometry missing")
    try:
        geometry = Geometry.from_dict(geo)
    except LayoutError as e:
        raise AttachError(str(e)) from None
    if nfds != 1 + geometry.notif_rings:
        raise AttachError(f"attach needs {1 + geometry.notif_rings} fds (memfd, a doorbell eventfd per notification "
                          f"ring), got {nfds}")
    pid = msg.get("pid", 0)
    name = msg.get("name", "")
    if not isinstance(pid, int) or not isinstance(name, str):
        raise AttachError("bad pid/name")
    return Hello(geometry, pid, name[:64])


def parse_watch(data: bytes, nfds: int, max_sockets: int) -> tuple[str, int]:
    """Validate a readiness registration: (type, socket); AttachError with the reason otherwise."""
    msg = _loads(data, "message")
    if not isinstance(msg, dict) or msg.get("type") not in ("watch", "unwatch"):
        raise AttachError("expected watch or unwatch")
    sock = msg.get("sock")
    if type(sock) is not int or not 0 <= sock < max_sockets:
        raise AttachError(f"socket {sock!r} out of range")
    if nfds != (1 if msg["type"] == "watch" else 0):
        raise AttachError(f"{msg['type']} with {nfds} fds")
    return msg["type"], sock


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

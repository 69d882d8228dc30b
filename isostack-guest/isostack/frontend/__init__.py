"""The IsoStack front-end: a socket-like API whose data path is shared memory, not system calls.

    from isostack import frontend as iso
    s = iso.create_connection(("10.0.0.2", 5001))   # attaches to isostackd on first use
    s.sendall(b"x" * 64)                             # copy into the tx ring; no syscall
    s.recv(4096)                                     # copy out of the rx ring; no syscall
    s.close()

`Stack(path)` is one attachment to every running isostackd; `iso.socket()` / `iso.create_connection()` use a
per-process default one (ISOSTACK_SOCKET overrides the path), attached again once every isostackd it had died
(the sockets of a dead isostackd fail with ECONNRESET: liveness.py).  The parts, one module each:

    instance    one attached isostackd: its shared memory, command queues, kick eventfd, slot allocator
    stack       Stack: attaches to every instance, creates sockets; its wait policy (spin, then doorbell)
    slot        one socket's slot: control page, command queue, commands and their results
    ring        RingBuffer: the wrap-around copy the tx and rx paths share
    tx          the send path: credits, SEND posting, the C fast path's installation
    rx          the receive path
    readiness   notification rings and doorbells, the per-socket readiness fd (selectors, asyncio)
    liveness    noticing an isostackd's death: its sockets fail with ECONNRESET instead of waiting forever
    steering    which instance owns a connection: listener groups, RSS source-port choice
    isosocket   IsoSocket, the socket-like facade built from the above
"""

from __future__ import annotations

import os
import socket as _socket
import threading

from .instance import Instance
from .isosocket import IsoSocket
from .slot import UNSET
from .stack import Stack

__all__ = ["Instance", "IsoSocket", "Stack", "create_connection", "default_stack", "socket"]

# ---------------------------------------------------------------- per-process default Stack
# (isoperf reads `_default` to report the default Stack's stats and detach it at the end of a run)

_default: Stack | None = None
_default_lock = threading.Lock()


def default_stack() -> Stack:
    global _default
    with _default_lock:
        if _default is None or _default.closed or not _default.alive:
            _default = Stack()  # a dead one is dropped, not closed: its sockets may be in use in other threads
        return _default


def _forget_default() -> None:  # a forked child must attach on its own
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_default)


def socket(family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0) -> IsoSocket:
    return default_stack().socket(family, type, proto)


def create_connection(address: tuple, timeout=UNSET, source_address=None) -> IsoSocket:
    return default_stack().create_connection(address, timeout, source_address)

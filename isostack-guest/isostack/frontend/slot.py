"""One socket's slot in its instance: the control page, the command queue, and commands with their results.

Everything above it (readiness, tx, rx, steering, the IsoSocket facade) is built on SocketSlot: a control
operation posts a command and waits for the dispatcher's completion in the control page, and the socket's
shared state (rx head, tx tail, flags) lives here so that each path reads the same words."""

from __future__ import annotations

import errno
import socket as _socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..layout import (
    C_ADDR_FAMILY,
    C_ADDR_IP0,
    C_ADDR_IP1,
    C_ADDR_PORT,
    C_DRAINING,
    C_ERR,
    C_NOTIF_RING,
    C_RES_SEQ,
    C_RES_VAL,
    C_RX_HEAD,
    C_STATE,
    C_TX_TAIL,
    ST_ERROR,
    Geometry,
    words_addr,
)
from .errors import os_error
from .instance import Instance
from .ring import RingBuffer

CONTROL_TIMEOUT = 10.0  # how long a non-blocking socket waits for the dispatcher to complete a control command

UNSET = object()  # "argument not given" where None means something (a timeout of None blocks)


def signed64(v: int) -> int:
    """A 64-bit word read as a two's complement integer (results and errors travel as negative values)."""
    return v - (1 << 64) if v >> 63 else v


class StackView(Protocol):
    """What a socket needs of its Stack (the Stack passes itself in; no import of the stack module here)."""

    geometry: Geometry
    instances: list[Instance]
    classifier: Any
    closed: bool

    def wait(self, cond: Callable[[], bool], deadline: float | None, instances: Iterable[Instance] | None = None,
             ring: int | None = None, spin: bool = True) -> bool: ...

    def current_ring(self) -> int: ...

    def local_ip(self, family: int, remote_ip: str) -> str: ...

    def socket(self, family: int = ..., type: int = ..., proto: int = ..., instance: int | None = None) -> Any: ...


class PythonTxPath:
    """The tx tail and fast flag where the extension has no Tx (IsoSocket's Python send/sendall then serve)."""

    __slots__ = ("tail", "fast")

    def __init__(self, tail: int) -> None:
        self.tail = tail
        self.fast = True


class SocketSlot:
    """The state every path of one socket shares, and the command/result plumbing (see the module docstring)."""

    def __init__(self, stack: StackView, slot: int, family: int, type: int, timeout, owner: Instance):
        g = stack.geometry
        self._stack = stack
        self._owner = owner  # the Instance this socket lives in (`instance` is its id, as the dispatcher says)
        self._slot = slot
        self.family = family
        self.type = type
        self.proto = 0
        self._words = owner.words
        self._control_word = g.control_off(slot) // 8  # index of this socket's first control-page word
        self._command_queue = owner.queues[slot]
        self._tx_ring = RingBuffer(owner.region.buf, g.tx_off(slot), g.tx_size)
        self._rx_ring = RingBuffer(owner.region.buf, g.rx_off(slot), g.rx_size)
        self._tx_size, self._rx_size = g.tx_size, g.rx_size
        self._control_addr = owner.base + self._control_word * 8  # raw addresses, for the C paths and atomics
        self._tx_ring_addr = owner.base + g.tx_off(slot)
        self._rx_ring_addr = owner.base + g.rx_off(slot)
        self._draining_addr = self._control_addr + C_DRAINING * 8
        self._asym_fence = owner.asym_fence
        self._timeout = _socket.getdefaulttimeout() if timeout is UNSET else timeout
        self._lock = threading.Lock()  # serializes this socket's control calls (application-local)
        self._rx_head = self._words[self._control_word + C_RX_HEAD]
        self._tx_path: Any = PythonTxPath(self._words[self._control_word + C_TX_TAIL])  # tx.py may install C's
        self._tx_shut = False
        self._tx_armed = False  # a non-blocking send found no credits: TX_WANT held until credits are seen
        self._closed = False
        self._gone = False  # its isostackd died (liveness.py): every call fails with ECONNRESET
        self._fileno = -1  # the readiness eventfd (readiness.py), once asked for
        self._members: list[Any] = []  # a listener on several instances: one socket each, self among them
        self._connect_pos = -1  # a non-blocking CONNECT in flight (its result not read yet)
        self._bound = False
        self.rx_queue: int | None = None  # predicted rx queue of an active open that picked its source port

    # ---------------------------------------------------------------- shared state
    @property
    def _tx_tail(self) -> int:
        return self._tx_path.tail

    @_tx_tail.setter
    def _tx_tail(self, value: int) -> None:
        self._tx_path.tail = value

    def _sync_fast(self) -> None:
        """The C send path may serve calls only while nothing needs the Python path's bookkeeping."""
        self._tx_path.fast = not (self._closed or self._gone or self._tx_shut or self._tx_armed)

    def _switch_off(self) -> None:
        """The Stack detaches: the memory goes away, so every later call must fail in the Python checks."""
        self._closed = True
        self._sync_fast()

    def _lose(self) -> None:
        """The dispatcher died (called by the liveness thread): no more sends into a ring nobody drains."""
        self._gone = True
        self._sync_fast()

    def _state(self) -> int:
        return self._words[self._control_word + C_STATE]

    def _check_open(self) -> None:
        """EBADF once closed (by the application, or its Stack detached); ECONNRESET once isostackd is gone."""
        if self._closed:
            raise os_error(errno.EBADF)
        if self._gone:
            raise self._owner.gone_error()

    def _check(self) -> int:
        self._check_open()
        words, control = self._words, self._control_word
        st = words[control + C_STATE]
        if st & ST_ERROR:
            raise os_error(words[control + C_ERR] or errno.EIO)
        return st

    def _use_this_cpus_ring(self) -> int:
        """Direct this socket's events to the notification ring of the calling thread's CPU; returns it."""
        r = self._stack.current_ring()
        words, control = self._words, self._control_word
        if words[control + C_NOTIF_RING] != r:
            words[control + C_NOTIF_RING] = r
        return r

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _addr(self) -> tuple:
        words, control = self._words, self._control_word
        return words_addr(words[control + C_ADDR_FAMILY], words[control + C_ADDR_PORT], words[control + C_ADDR_IP0],
                          words[control + C_ADDR_IP1])

    # ---------------------------------------------------------------- commands
    def _post(self, op: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"") -> int:
        pos = self._command_queue.push(op, self._slot, a, b, c, ip)
        if pos == -1:  # queue full: the dispatcher is behind; wait for a slot
            deadline = time.monotonic() + 5.0
            while pos == -1 and time.monotonic() < deadline:
                if self._gone:
                    raise self._owner.gone_error()
                time.sleep(0.0001)
                pos = self._command_queue.push(op, self._slot, a, b, c, ip)
        if pos < 0:
            raise os_error(errno.EAGAIN if pos == -1 else errno.EPROTO, "command queue full or corrupt")
        self._owner.flag_pending(self._slot)
        return pos

    def _call(self, op: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"", deadline=UNSET) -> int:
        """Post a command and wait for its result; a non-blocking socket waits up to CONTROL_TIMEOUT."""
        with self._lock:
            self._check_open()
            if self._connect_pos >= 0:  # the result words are about to be reused: take the CONNECT's first
                self._connect_error(block=True)
            ring = self._use_this_cpus_ring()
            pos = self._post(op, a, b, c, ip)
            if deadline is UNSET:
                deadline = time.monotonic() + CONTROL_TIMEOUT if self._timeout == 0.0 else self._deadline()
            if not self._stack.wait(lambda: self._done(pos), deadline, (self._owner,), ring):
                raise TimeoutError("timed out")
            return self._result(pos)

    def _done(self, pos: int) -> bool:
        words, control = self._words, self._control_word
        return words[control + C_RES_SEQ] > pos or bool(words[control + C_STATE] & ST_ERROR)

    def _result(self, pos: int) -> int:
        words, control = self._words, self._control_word
        if words[control + C_RES_SEQ] <= pos:
            raise os_error(words[control + C_ERR] or errno.EIO)
        val = signed64(words[control + C_RES_VAL])
        if val < 0:
            raise os_error(-val)
        return val

    def _connect_error(self, block: bool = False) -> int | None:
        """errno of the non-blocking CONNECT in flight (0: connected) once it completed, then forgets it;
        None while it is still in progress (block: wait for it, up to CONTROL_TIMEOUT)."""
        pos = self._connect_pos
        if not self._done(pos):
            if not block or not self._stack.wait(lambda: self._done(pos), time.monotonic() + CONTROL_TIMEOUT,
                                                 (self._owner,), self._use_this_cpus_ring()):
                return None
        self._connect_pos = -1
        try:
            self._result(pos)
        except OSError as e:
            return e.errno or errno.EIO
        return 0

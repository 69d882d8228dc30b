"""The send path: copy into the socket's tx ring, publish the tail, post SEND only when nobody drains the ring.

A send copies into the tx ring, publishes the tail, and posts a SEND command only when the dispatcher is not
already draining that socket (xchg on the draining flag).  With the C extension, `sock.send` and
`sock.sendall` are the methods of a per-socket C object (_fastpath.Tx, holding the tx tail): one C call per
message, which also posts the SEND itself; the Python path here serves every edge case (flags, not connected,
no credits, closed, shut down, credits awaited, a full command queue).  Credits are the free bytes of the
ring; a blocking send waits for them without spinning (the ring drains at the kernel's pace)."""

from __future__ import annotations

import errno
import time

from .. import native
from ..layout import (
    BODY,
    C_DRAINING,
    C_STATE,
    C_TX_HEAD,
    C_TX_TAIL,
    C_TX_WANT,
    H_DISP_SLEEPING,
    H_KICKS,
    H_PENDING,
    ST_CONNECTED,
    ST_ERROR,
    Op,
)
from ..queues import U64
from .errors import os_error
from .readiness import Readiness

C_SEND = native.FAST  # the extension's module-level send (None: no extension here)
C_TX_PATH = getattr(native.FAST, "Tx", None)  # the per-socket C send path (TxPath._install_tx_path installs it)


class TxPath(Readiness):
    """send/sendall and the credit wait (see the module docstring)."""

    def _install_tx_path(self) -> None:
        """Make sock.send / sock.sendall the C Tx object's methods where the extension has them."""
        if C_TX_PATH is None:
            return
        owner, slot, queue = self._owner, self._slot, self._command_queue
        # The C path also posts the SEND itself (no Python between winning the flag and the SEND queued).
        c_post = (BODY.pack(Op.SEND, 0, slot, 0, 0, 0, b""), queue.tail_addr, queue.slots_addr, queue.nslots,
                  owner.base + (H_PENDING + (slot >> 6)) * 8, 1 << (slot & 63), owner.base + H_DISP_SLEEPING * 8,
                  owner.base + H_KICKS * 8, owner.kick_fd, owner.c_send_posts)
        self._tx_path = C_TX_PATH(self._control_addr, self._tx_ring_addr, self._tx_size, self._tx_tail,
                                  self._asym_fence, self._send_slow, self._sendall_slow, self._post_send, c_post)
        self.send = self._tx_path.send
        self.sendall = self._tx_path.sendall

    def send(self, data, flags: int = 0) -> int:
        """Copy as much of data as the tx ring has credits for; post SEND only if nobody drains the ring."""
        if C_SEND is not None and not flags and not self._closed and not self._gone and not self._tx_shut:
            r = C_SEND.send(self._control_addr, self._tx_ring_addr, self._tx_size, self._tx_tail, self._asym_fence,
                            data)
            if r > 1:  # 2 * bytes copied + must-post
                if self._tx_armed:
                    self._disarm_tx()
                self._tx_tail += r >> 1
                if r & 1:
                    self._post_send(self._tx_tail)
                return r >> 1
        return self._send_slow(data, flags)

    def _send_slow(self, data, flags: int = 0) -> int:
        """Checks, credit waits, and the pure-Python copy (no extension)."""
        if flags:
            raise os_error(errno.EOPNOTSUPP, "send flags")
        words, control = self._words, self._control_word
        self._check_open()
        st = words[control + C_STATE]
        if st & ST_ERROR or not st & ST_CONNECTED or self._tx_shut:
            self._check()
            raise os_error(errno.EPIPE if self._tx_shut else errno.ENOTCONN)
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        n = len(data)
        if n == 0:
            return 0
        tail = self._tx_tail
        size = self._tx_size
        free = size - (tail - words[control + C_TX_HEAD])
        if free <= 0:
            if self._timeout == 0.0:
                self._arm_tx()
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "tx ring full")

            def space() -> bool:
                return size - (tail - words[control + C_TX_HEAD]) > 0 or bool(words[control + C_STATE] & ST_ERROR)

            # Announce the wait (a counter: the dispatcher only reads it, so no announcement can be lost).
            want = self._control_addr + C_TX_WANT * 8
            native.fetch_add64(want, 1)
            try:
                ok = self._stack.wait(space, self._deadline(), (self._owner,), self._use_this_cpus_ring(), spin=False)
            finally:
                native.fetch_add64(want, U64)
            if not ok:
                raise TimeoutError("timed out")
            self._check()
            free = size - (tail - words[control + C_TX_HEAD])
        if self._tx_armed:
            self._disarm_tx()
        k = n if n <= free else free
        self._tx_ring.write(tail, data if k == n else memoryview(data)[:k])
        tail += k
        self._tx_tail = tail
        words[control + C_TX_TAIL] = tail
        # Post SEND only if the dispatcher is not draining this ring.  With membarrier (see queues.py) a plain
        # load of the flag is enough; the xchg decides who posts when the flag looked clear.
        if (not self._asym_fence or not words[control + C_DRAINING]) and not native.xchg64(self._draining_addr, 1):
            self._post_send(tail)
        return k

    def sendall(self, data, flags: int = 0) -> None:
        sent = 0
        if C_SEND is not None and not flags and not self._closed and not self._gone and not self._tx_shut:
            r = C_SEND.send(self._control_addr, self._tx_ring_addr, self._tx_size, self._tx_tail, self._asym_fence,
                            data)
            if r > 1:
                sent = r >> 1
                self._tx_tail += sent
                if r & 1:
                    self._post_send(self._tx_tail)
                if type(data) is bytes and sent == len(data):
                    return
        self._sendall_slow(data, flags, sent)

    def _sendall_slow(self, data, flags: int = 0, sent: int = 0) -> None:
        """sendall from byte `sent` on: a send per stretch of credits, waiting for them (the socket's timeout
        bounds the whole call)."""
        mv = memoryview(data).cast("B")
        total = len(mv)
        deadline = self._deadline()
        old = self._timeout
        try:
            while sent < total:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out")
                    self._timeout = left
                sent += self.send(mv[sent:], flags)
        finally:
            self._timeout = old

    def _post_send(self, tail: int) -> None:
        """Post SEND: we won the draining flag, so nobody drains the ring until this SEND is read.  If it
        cannot be posted, hand the flag back (the dispatcher is not draining: it would have held the flag), so
        the next send posts instead of leaving the ring stranded."""
        try:
            self._post(Op.SEND, tail)
        except BaseException:
            if not self._closed:
                native.xchg64(self._draining_addr, 0)
            raise
        self._owner.send_posts += 1

    def _arm_tx(self) -> None:
        """A non-blocking send found no credits: have the dispatcher post EV_TX when credits come."""
        if not self._tx_armed:
            self._tx_armed = True
            self._sync_fast()
            native.fetch_add64(self._control_addr + C_TX_WANT * 8, 1)

    def _disarm_tx(self) -> None:
        if self._tx_armed:
            self._tx_armed = False
            self._sync_fast()
            native.fetch_add64(self._control_addr + C_TX_WANT * 8, U64)

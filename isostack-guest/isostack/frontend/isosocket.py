"""IsoSocket: the socket-like API applications use, assembled from the send path (tx), the receive path (rx),
readiness and steering over one SocketSlot.  Control operations (connect, bind, getsockopt, ...) post a
command and wait for its completion in the socket's control page.

Non-blocking use (settimeout(0) / setblocking(False)): connect() raises BlockingIOError(EINPROGRESS) and the
result is read with getsockopt(SOL_SOCKET, SO_ERROR); recv/send/accept raise BlockingIOError; fileno() is the
socket's readiness eventfd (readiness.py)."""

from __future__ import annotations

import errno
import os
import socket as _socket
import struct
import time

from ..layout import (
    C_ERR,
    C_OPTVAL,
    C_STATE,
    GETSOCKOPT_ALLOWED,
    ST_ACCEPTABLE,
    ST_ERROR,
    ST_LISTENING,
    Op,
    encode_addr,
)
from .errors import os_error
from .instance import Instance
from .rx import RxPath
from .slot import CONTROL_TIMEOUT, UNSET, StackView, signed64
from .steering import Steering
from .tx import TxPath


class IsoSocket(TxPath, RxPath, Steering):
    """A TCP socket served by isostackd; mirrors the parts of socket.socket that applications use."""

    def __init__(self, stack: StackView, slot: int, family: int, type: int, owner: Instance, timeout=UNSET):
        super().__init__(stack, slot, family, type, timeout, owner)
        self._install_tx_path()
        owner.adopt(self)

    # ---------------------------------------------------------------- timeouts
    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # ---------------------------------------------------------------- connections
    def connect(self, address: tuple) -> None:
        """Blocking: returns once connected.  Non-blocking: BlockingIOError(EINPROGRESS), then fileno() becomes
        readable when it completed and getsockopt(SOL_SOCKET, SO_ERROR) says how; EALREADY meanwhile."""
        if self._timeout == 0.0 and self._connect_pos >= 0:
            with self._lock:
                err = self._connect_error()
            if err is None:
                raise os_error(errno.EALREADY)
            if err:
                raise os_error(err)
            return
        self._pick_source_port(address)
        port, ip = encode_addr(self.family, address)
        if self._timeout != 0.0:
            self._call(Op.CONNECT, self.family, port, 0, ip)
            return
        with self._lock:
            self._check_open()
            self._use_this_cpus_ring()
            self._connect_pos = self._post(Op.CONNECT, self.family, port, 0, ip)
        self._rearm()
        raise BlockingIOError(errno.EINPROGRESS, "connection in progress")

    def connect_ex(self, address: tuple) -> int:
        try:
            self.connect(address)
        except TimeoutError:
            return errno.ETIMEDOUT
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    def accept(self) -> tuple[IsoSocket, tuple]:
        """The next connection from whichever instance has one; it is owned by that instance."""
        deadline = self._deadline()
        stack = self._stack
        members = self._members or [self]
        while True:
            for m in members:
                st = m._check()
                if not st & ST_LISTENING:
                    raise os_error(errno.EINVAL, "socket is not listening")
                if st & ST_ACCEPTABLE:
                    got = m._accept_one(deadline, self._timeout == 0.0)
                    if got is not None:
                        return got
            if self._timeout == 0.0:
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "no connection waiting")
            ring = [m._use_this_cpus_ring() for m in members][0]
            if not stack.wait(lambda: any(m._acceptable() for m in members), deadline, [m._owner for m in members],
                              ring):
                raise TimeoutError("timed out")

    def _accept_one(self, deadline, nonblocking: bool | None = None) -> tuple[IsoSocket, tuple] | None:
        owner = self._owner
        if nonblocking is None:
            nonblocking = self._timeout == 0.0
        # The connection is there: only the dispatcher's answer is awaited.  `nonblocking` is the listener's
        # mode (a member of a multi-instance listener keeps its own, blocking, timeout: its deadline of "now"
        # made the ACCEPT time out before the dispatcher could answer).
        if nonblocking:
            deadline = time.monotonic() + CONTROL_TIMEOUT
        new = owner.alloc_slot(self._stack.wait)
        try:
            self._call(Op.ACCEPT, new, deadline=deadline)
        except BlockingIOError:
            owner.release_slot(new)
            return None
        except BaseException:
            owner.release_slot(new)
            raise
        s = IsoSocket(self._stack, new, self.family, self.type, owner, timeout=_socket.getdefaulttimeout())
        return s, s._addr()

    def _acceptable(self) -> bool:
        return bool(self._words[self._control_word + C_STATE] & (ST_ACCEPTABLE | ST_ERROR))

    def shutdown(self, how: int) -> None:
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self._tx_shut = True
            self._sync_fast()
        self._call(Op.SHUTDOWN, how)

    # ---------------------------------------------------------------- options and addresses
    def setsockopt(self, level: int, optname: int, value) -> None:
        if isinstance(value, (bytes, bytearray)):
            value = struct.unpack("<i", bytes(value)[:4].ljust(4, b"\0"))[0]
        self._call(Op.SETSOCKOPT, level, optname, int(value))

    def getsockopt(self, level: int, optname: int, buflen: int = 0):
        """Integer options: SO_ERROR (the non-blocking connect's result, else the socket's error) and SO_TYPE
        here, the others (layout.GETSOCKOPT_ALLOWED) read from the kernel socket by the dispatcher."""
        if (level, optname) == (_socket.SOL_SOCKET, _socket.SO_ERROR):
            with self._lock:
                if self._connect_pos >= 0:
                    v = self._connect_error() or 0
                else:
                    v = self._words[self._control_word + C_ERR] if self._state() & ST_ERROR else 0
        elif (level, optname) == (_socket.SOL_SOCKET, _socket.SO_TYPE):
            v = self.type
        elif (level, optname) not in GETSOCKOPT_ALLOWED:  # the dispatcher would fail the socket for asking
            raise os_error(errno.ENOPROTOOPT)
        else:
            self._call(Op.GETSOCKOPT, level, optname)
            v = signed64(self._words[self._control_word + C_OPTVAL])
        if buflen:
            return (v & 0xFFFFFFFF).to_bytes(4, "little")[:buflen]  # every option here is a C int
        return v

    def getsockname(self) -> tuple:
        self._call(Op.GETSOCKNAME)
        return self._addr()

    def getpeername(self) -> tuple:
        self._call(Op.GETPEERNAME)
        return self._addr()

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Post CLOSE (queued tx bytes still go out) without waiting; the slot is reused once it is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sync_fast()
            if self._fileno >= 0:
                os.close(self._fileno)
                self._fileno = -1
            if self._stack.closed:
                return
            for m in self._members:
                if m is not self:
                    m.close()
            if self._gone:
                return  # nobody reads the queue any more
            try:
                pos = self._post(Op.CLOSE)
            except OSError:
                return  # queue dead: the slot is lost until the Stack detaches
            self._owner.release_slot(self._slot, pos)

    def __enter__(self) -> IsoSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "detached" if self._stack.closed else f"{self._state():#x}"
        return f"<IsoSocket instance={self._owner.id} slot={self._slot} state={state} closed={self._closed}>"

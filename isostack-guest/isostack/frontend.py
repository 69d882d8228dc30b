"""The IsoStack front-end: a socket-like API whose data path is shared memory, not system calls.

    from isostack import frontend as iso
    s = iso.create_connection(("10.0.0.2", 5001))   # attaches to isostackd on first use
    s.sendall(b"x" * 64)                             # copy into the tx ring; no syscall
    s.recv(4096)                                     # copy out of the rx ring; no syscall
    s.close()

`Stack(path)` is one attachment (one memfd with every socket's queues and rings, one doorbell eventfd);
`iso.socket()` / `iso.create_connection()` use a per-process default one (ISOSTACK_SOCKET overrides the
path).  A send copies into the socket's tx ring, publishes the tail, and posts a SEND command only when
the dispatcher is not already draining that socket (xchg on the draining flag).  A recv copies out of the
rx ring and publishes the head; the dispatcher sees the new credits itself.  Blocking calls spin briefly,
then announce they sleep (sleepers counter) and wait on the doorbell eventfd, which the dispatcher rings
only for sleeping applications.  Control operations (socket/bind/connect/...) post a command and wait for
its completion in the socket's control page.

fileno() returns a dup of the application's doorbell eventfd (all sockets of one Stack share it; readiness
may be spurious): it puts the Stack in "selector mode" where every notification rings the doorbell; call
`Stack.poll()` after a wake-up to consume it and get the (socket, events) hints.
"""

from __future__ import annotations

import errno
import os
import select
import socket as _socket
import struct
import threading
import time

from . import native
from .attach import DEFAULT_SOCKET, MAX_MESSAGE, Hello, parse_reply
from .layout import (
    C_ADDR_FAMILY,
    C_ADDR_IP0,
    C_ADDR_IP1,
    C_ADDR_PORT,
    C_DRAINING,
    C_ERR,
    C_RES_SEQ,
    C_RES_VAL,
    C_RX_HEAD,
    C_RX_TAIL,
    C_STATE,
    C_TX_HEAD,
    C_TX_TAIL,
    C_TX_WANT,
    H_DISP_SLEEPING,
    H_KICKS,
    H_MAGIC,
    H_NOTIF_DROPPED,
    H_NOTIF_HEAD,
    H_NOTIF_TAIL,
    H_PENDING,
    H_RUNG,
    H_SAVED,
    H_SLEEPERS,
    H_VERSION,
    MAGIC,
    ST_ACCEPTABLE,
    ST_CLOSED,
    ST_CONNECTED,
    ST_EOF,
    ST_ERROR,
    ST_LISTENING,
    VERSION,
    Geometry,
    Op,
    encode_addr,
    ring_spans,
    words_addr,
)
from .queues import CommandQueue, NotifyRing, Region, create_memfd

U64 = (1 << 64) - 1
_FAST = native.FAST
MAX_SLEEP_MS = 5
SPIN = 20  # condition checks (with a GIL-releasing yield) before sleeping on the doorbell

_sentinel = object()


def _err(code: int, what: str = "") -> OSError:
    msg = os.strerror(code) + (f" ({what})" if what else "")
    return OSError(code, msg)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


class Stack:
    """One attachment to isostackd: shared memory, doorbell, slot allocator and waits."""

    def __init__(self, path: str | None = None, geometry: Geometry | None = None, name: str = "",
                 connect_timeout: float = 5.0):
        self.path = path or os.environ.get("ISOSTACK_SOCKET", DEFAULT_SOCKET)
        self.geometry = g = (geometry or Geometry()).check()
        memfd = create_memfd(g.total_size)
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC | os.EFD_SEMAPHORE)
        try:
            self.region = Region(memfd, g.total_size)
            q = self.q = self.region.q
            q[H_MAGIC], q[H_VERSION] = MAGIC, VERSION
            self.queues = []
            for i in range(g.max_sockets):
                cq = CommandQueue(self.region, g.control_off(i) // 8, g.cmdq_off(i), g.cmdq_slots)
                cq.init()
                self.queues.append(cq)
            self.notify = NotifyRing(self.region, g.notif_off, g.notif_slots, H_NOTIF_HEAD, H_NOTIF_TAIL,
                                     H_NOTIF_DROPPED)
            self.conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
            self.conn.settimeout(connect_timeout)
            try:
                self.conn.connect(self.path)
            except OSError as e:
                self.conn.close()
                raise OSError(e.errno, f"cannot attach to isostackd at {self.path}: {e.strerror}") from None
            _socket.send_fds(self.conn, [Hello(g, os.getpid(), name or f"pid{os.getpid()}").encode()],
                             [memfd, self.doorbell])
            data, fds, _f, _a = _socket.recv_fds(self.conn, MAX_MESSAGE, 2)
            self.info = parse_reply(data)
            if len(fds) != 1:
                raise OSError(errno.EPROTO, "isostackd sent no kick eventfd")
            self.kick = fds[0]
            # Fast send path (plain load of the draining flag) only if the dispatcher fences us with membarrier.
            self.asym_fence = bool(self.info.get("membarrier")) and native.membarrier_register()
        finally:
            os.close(memfd)
        self.base = self.region.base
        self.sleepers_addr = self.base + H_SLEEPERS * 8
        self._alloc_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._free = list(range(g.max_sockets - 1, -1, -1))
        self._closing: dict[int, int] = {}  # slot -> position of its CLOSE
        self._selector_mode = False
        self.closed = False

    # ---------------------------------------------------------------- public
    def socket(self, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0) -> IsoSocket:
        idx = self._alloc()
        s = IsoSocket(self, idx, family, type)
        try:
            s._call(Op.SOCKET, family, type)
        except BaseException:
            self._release(idx)
            raise
        return s

    def create_connection(self, address: tuple, timeout=_sentinel, source_address=None) -> IsoSocket:
        host, port = address[0], address[1]
        err = None
        for family, _t, _p, _c, sa in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
            if family not in (_socket.AF_INET, _socket.AF_INET6):
                continue
            s = self.socket(family)
            try:
                if timeout is not _sentinel:
                    s.settimeout(timeout)
                if source_address:
                    s.bind(source_address)
                s.connect(sa)
                return s
            except OSError as e:
                err = e
                s.close()
        raise err or OSError(errno.EHOSTUNREACH, f"no address for {host}")

    def stats(self) -> dict:
        q = self.q
        return {"doorbells_rung": q[H_RUNG], "doorbells_saved": q[H_SAVED], "kicks": q[H_KICKS],
                "notifications_dropped": q[H_NOTIF_DROPPED], "app": self.info.get("app")}

    def poll(self) -> list[tuple[int, int]]:
        """Consume the doorbell and return the notification hints [(socket slot, events)]."""
        try:
            while True:
                os.eventfd_read(self.doorbell)
        except BlockingIOError:
            pass
        with self._poll_lock:
            return [(sock, ev) for sock, ev, _seq in self.notify.drain()]

    def close(self) -> None:
        """Detach: isostackd closes every socket of this Stack and releases the memory."""
        if self.closed:
            return
        self.closed = True
        self.conn.close()
        os.close(self.doorbell)
        os.close(self.kick)
        self.queues.clear()
        self.notify = None
        self.region.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _alloc(self, timeout: float = 2.0) -> int:
        """A free slot; a slot whose CLOSE is still in flight becomes free once the dispatcher finished it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._alloc_lock:
                if self._free:
                    return self._free.pop()
                for idx in [i for i in self._closing if self._closed_done(i)]:
                    del self._closing[idx]
                    return idx
                if not self._closing:
                    break
            if not self.wait(lambda: any(self._closed_done(i) for i in list(self._closing)), deadline):
                break
        raise _err(errno.EMFILE, f"all {self.geometry.max_sockets} IsoStack sockets in use")

    def _closed_done(self, idx: int) -> bool:
        pos = self._closing.get(idx)
        cw = self.geometry.control_off(idx) // 8
        return pos is not None and self.q[cw + C_RES_SEQ] > pos and bool(self.q[cw + C_STATE] & ST_CLOSED)

    def _release(self, idx: int, close_pos: int | None = None) -> None:
        with self._alloc_lock:
            if close_pos is None:
                self._free.append(idx)
            else:
                self._closing[idx] = close_pos

    def _pending(self, idx: int) -> None:
        """Flag slot idx in the pending bitmap; kick the dispatcher if it announced it sleeps."""
        native.fetch_or64(self.base + (H_PENDING + (idx >> 6)) * 8, 1 << (idx & 63))
        # The locked OR above orders our stores before this load (Dekker with the dispatcher's sleep).
        if self.q[H_DISP_SLEEPING]:
            self.q[H_KICKS] += 1
            try:
                os.eventfd_write(self.kick, 1)
            except OSError:
                pass

    def _selector(self) -> None:
        if not self._selector_mode:
            self._selector_mode = True
            native.fetch_add64(self.sleepers_addr, 1)  # a permanent sleeper: always ring

    def wait(self, cond, deadline: float | None) -> bool:
        """Wait until cond() is true or the deadline (monotonic) passes; spin, then sleep on the doorbell."""
        for _ in range(SPIN):
            if cond():
                return True
            time.sleep(0)
        p = select.poll()
        p.register(self.doorbell, select.POLLIN)
        while True:
            if cond():
                return True
            # Several threads share the doorbell and one may eat another's token, so sleeps are bounded
            # (MAX_SLEEP_MS): a lost token costs at most that much latency, never a hang.
            if deadline is None:
                ms = MAX_SLEEP_MS
            else:
                ms = min((deadline - time.monotonic()) * 1000, MAX_SLEEP_MS)
                if ms <= 0:
                    return False
            native.fetch_add64(self.sleepers_addr, 1)  # announce, then look again (locked add = fence)
            try:
                if cond():
                    return True
                if p.poll(ms):
                    try:
                        os.eventfd_read(self.doorbell)
                    except BlockingIOError:
                        pass
            finally:
                native.fetch_add64(self.sleepers_addr, U64)
            if self._poll_lock.acquire(blocking=False):
                try:
                    self.notify.drain()
                finally:
                    self._poll_lock.release()


class IsoSocket:
    """A TCP socket served by isostackd; mirrors the parts of socket.socket that applications use."""

    def __init__(self, stack: Stack, idx: int, family: int, type: int, timeout=_sentinel):
        g = stack.geometry
        self._stack = stack
        self._idx = idx
        self.family = family
        self.type = type
        self.proto = 0
        self._q = stack.q
        self._buf = stack.region.buf
        self._cw = g.control_off(idx) // 8
        self._cmdq = stack.queues[idx]
        self._tx_off, self._tx_size = g.tx_off(idx), g.tx_size
        self._rx_off, self._rx_size = g.rx_off(idx), g.rx_size
        self._draining_addr = stack.base + (self._cw + C_DRAINING) * 8
        self._asym = stack.asym_fence
        self._ctl = stack.base + self._cw * 8
        self._txr = stack.base + self._tx_off
        self._rxr = stack.base + self._rx_off
        self._timeout = _socket.getdefaulttimeout() if timeout is _sentinel else timeout
        self._lock = threading.Lock()  # serializes this socket's control calls (application-local)
        self._tx_tail = self._q[self._cw + C_TX_TAIL]
        self._rx_head = self._q[self._cw + C_RX_HEAD]
        self._tx_shut = False
        self._closed = False
        self._fileno = -1

    # ---------------------------------------------------------------- plumbing
    def _state(self) -> int:
        return self._q[self._cw + C_STATE]

    def _check(self) -> int:
        if self._closed:
            raise _err(errno.EBADF)
        st = self._q[self._cw + C_STATE]
        if st & ST_ERROR:
            raise _err(self._q[self._cw + C_ERR] or errno.EIO)
        return st

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _post(self, op: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"") -> int:
        pos = self._cmdq.push(op, self._idx, a, b, c, ip)
        if pos == -1:  # queue full: the dispatcher is behind; wait for a slot
            deadline = time.monotonic() + 5.0
            while pos == -1 and time.monotonic() < deadline:
                time.sleep(0.0001)
                pos = self._cmdq.push(op, self._idx, a, b, c, ip)
        if pos < 0:
            raise _err(errno.EAGAIN if pos == -1 else errno.EPROTO, "command queue full or corrupt")
        self._stack._pending(self._idx)
        return pos

    def _call(self, op: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"", deadline=_sentinel) -> int:
        with self._lock:
            if self._closed:
                raise _err(errno.EBADF)
            pos = self._post(op, a, b, c, ip)
            q, cw = self._q, self._cw

            def done() -> bool:
                return q[cw + C_RES_SEQ] > pos or bool(q[cw + C_STATE] & ST_ERROR)

            if not self._stack.wait(done, self._deadline() if deadline is _sentinel else deadline):
                raise TimeoutError("timed out")
            if q[cw + C_RES_SEQ] <= pos:
                raise _err(q[cw + C_ERR] or errno.EIO)
            val = _signed(q[cw + C_RES_VAL])
            if val < 0:
                raise _err(-val)
            return val

    def _addr(self) -> tuple:
        q, cw = self._q, self._cw
        return words_addr(q[cw + C_ADDR_FAMILY], q[cw + C_ADDR_PORT], q[cw + C_ADDR_IP0], q[cw + C_ADDR_IP1])

    # ---------------------------------------------------------------- socket API
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

    def bind(self, address: tuple) -> None:
        port, ip = encode_addr(self.family, address)
        self._call(Op.BIND, self.family, port, 0, ip)

    def listen(self, backlog: int = 128) -> None:
        self._call(Op.LISTEN, max(0, min(int(backlog), 65535)))

    def connect(self, address: tuple) -> None:
        port, ip = encode_addr(self.family, address)
        self._call(Op.CONNECT, self.family, port, 0, ip)

    def connect_ex(self, address: tuple) -> int:
        try:
            self.connect(address)
        except TimeoutError:
            return errno.ETIMEDOUT
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    def accept(self) -> tuple[IsoSocket, tuple]:
        deadline = self._deadline()
        stack = self._stack
        while True:
            st = self._check()
            if not st & ST_LISTENING:
                raise _err(errno.EINVAL, "socket is not listening")
            if st & ST_ACCEPTABLE:
                new = stack._alloc()
                try:
                    val = self._call(Op.ACCEPT, new, deadline=deadline)
                except BlockingIOError:
                    stack._release(new)
                    val = -1
                except BaseException:
                    stack._release(new)
                    raise
                if val >= 0:
                    s = IsoSocket(stack, new, self.family, self.type, timeout=_socket.getdefaulttimeout())
                    return s, s._addr()
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "no connection waiting")
            if not stack.wait(self._acceptable, deadline):
                raise TimeoutError("timed out")

    def _acceptable(self) -> bool:
        return bool(self._q[self._cw + C_STATE] & (ST_ACCEPTABLE | ST_ERROR))

    def send(self, data, flags: int = 0) -> int:
        """Copy as much of data as the tx ring has credits for; post SEND only if nobody drains the ring."""
        if _FAST is not None and not flags and not self._closed and not self._tx_shut:
            r = _FAST.send(self._ctl, self._txr, self._tx_size, self._tx_tail, self._asym, data)
            if r > 1:  # 2 * bytes copied + must-post
                self._tx_tail += r >> 1
                if r & 1:
                    self._post(Op.SEND, self._tx_tail)
                return r >> 1
        return self._send_slow(data, flags)

    def _send_slow(self, data, flags: int) -> int:
        """Checks, credit waits, and the pure-Python copy (no extension)."""
        if flags:
            raise _err(errno.EOPNOTSUPP, "send flags")
        q, cw = self._q, self._cw
        if self._closed:
            raise _err(errno.EBADF)
        st = q[cw + C_STATE]
        if st & ST_ERROR or not st & ST_CONNECTED or self._tx_shut:
            self._check()
            raise _err(errno.EPIPE if self._tx_shut else errno.ENOTCONN)
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        n = len(data)
        if n == 0:
            return 0
        tail = self._tx_tail
        free = self._tx_size - (tail - q[cw + C_TX_HEAD])
        if free <= 0:
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "tx ring full")
            size = self._tx_size

            def space() -> bool:
                return size - (tail - q[cw + C_TX_HEAD]) > 0 or bool(q[cw + C_STATE] & ST_ERROR)

            # Announce the wait (a counter: the dispatcher only reads it, so no announcement can be lost).
            want = self._ctl + C_TX_WANT * 8
            native.fetch_add64(want, 1)
            try:
                ok = self._stack.wait(space, self._deadline())
            finally:
                native.fetch_add64(want, U64)
            if not ok:
                raise TimeoutError("timed out")
            self._check()
            free = self._tx_size - (tail - q[cw + C_TX_HEAD])
        k = n if n <= free else free
        size = self._tx_size
        o = tail & (size - 1)
        start = self._tx_off + o
        if o + k <= size:  # the common case: one piece
            self._buf[start : start + k] = data if k == n else memoryview(data)[:k]
        else:
            first = size - o
            mv = memoryview(data)
            self._buf[start : start + first] = mv[:first]
            self._buf[self._tx_off : self._tx_off + k - first] = mv[first:k]
        tail += k
        self._tx_tail = tail
        q[cw + C_TX_TAIL] = tail
        # Post SEND only if the dispatcher is not draining this ring.  With membarrier (see queues.py) a plain
        # load of the flag is enough; the xchg decides who posts when the flag looked clear.
        if (not self._asym or not q[cw + C_DRAINING]) and not native.xchg64(self._draining_addr, 1):
            self._post(Op.SEND, tail)
        return k

    def sendall(self, data, flags: int = 0) -> None:
        sent = 0
        if _FAST is not None and not flags and not self._closed and not self._tx_shut:
            r = _FAST.send(self._ctl, self._txr, self._tx_size, self._tx_tail, self._asym, data)
            if r > 1:
                sent = r >> 1
                self._tx_tail += sent
                if r & 1:
                    self._post(Op.SEND, self._tx_tail)
                if type(data) is bytes and sent == len(data):
                    return
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

    def _wait_rx(self) -> None:
        q, cw, head = self._q, self._cw, self._rx_head
        if not self._stack.wait(lambda: q[cw + C_RX_TAIL] != head or q[cw + C_STATE] & (ST_EOF | ST_ERROR),
                                self._deadline()):
            raise TimeoutError("timed out")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if flags:
            raise _err(errno.EOPNOTSUPP, "recv flags")
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if _FAST is not None and not flags and not self._closed and bufsize > 0:
            data = _FAST.recv(self._ctl, self._rxr, self._rx_size, self._rx_head, bufsize)
            if data:
                self._rx_head += len(data)
                return data
        q, cw = self._q, self._cw
        while True:
            if self._closed:
                raise _err(errno.EBADF)
            head = self._rx_head
            avail = q[cw + C_RX_TAIL] - head
            if avail > 0:
                k = avail if avail <= bufsize else bufsize
                buf, off = self._buf, self._rx_off
                spans = ring_spans(head, k, self._rx_size)
                if len(spans) == 1:
                    o, ln = spans[0]
                    data = bytes(buf[off + o : off + o + ln])
                else:
                    data = b"".join(bytes(buf[off + o : off + o + ln]) for o, ln in spans)
                self._rx_head = head + k
                q[cw + C_RX_HEAD] = head + k
                return data
            st = q[cw + C_STATE]
            if st & ST_ERROR:
                self._check()
            if st & ST_EOF:
                if q[cw + C_RX_TAIL] == head:  # EOF is published after the last data
                    return b""
                continue
            if not st & ST_CONNECTED:
                raise _err(errno.ENOTCONN)
            if bufsize == 0:
                return b""
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "no data")
            self._wait_rx()

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        mv = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(mv), flags)
        mv[: len(data)] = data
        return len(data)

    def shutdown(self, how: int) -> None:
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self._tx_shut = True
        self._call(Op.SHUTDOWN, how)

    def setsockopt(self, level: int, optname: int, value) -> None:
        if isinstance(value, (bytes, bytearray)):
            value = struct.unpack("<i", bytes(value)[:4].ljust(4, b"\0"))[0]
        self._call(Op.SETSOCKOPT, level, optname, int(value))

    def getsockname(self) -> tuple:
        self._call(Op.GETSOCKNAME)
        return self._addr()

    def getpeername(self) -> tuple:
        self._call(Op.GETPEERNAME)
        return self._addr()

    def fileno(self) -> int:
        """A dup of the Stack's doorbell eventfd (readable when the dispatcher posted something)."""
        if self._closed:
            return -1
        if self._fileno < 0:
            self._stack._selector()
            self._fileno = os.dup(self._stack.doorbell)
        return self._fileno

    def close(self) -> None:
        """Post CLOSE (queued tx bytes still go out) without waiting; the slot is reused once it is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fileno >= 0:
                os.close(self._fileno)
                self._fileno = -1
            if self._stack.closed:
                return
            try:
                pos = self._post(Op.CLOSE)
            except OSError:
                return  # queue dead: the slot is lost until the Stack detaches
            self._stack._release(self._idx, pos)

    def __enter__(self) -> IsoSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "detached" if self._stack.closed else f"{self._state():#x}"
        return f"<IsoSocket slot={self._idx} state={state} closed={self._closed}>"


# ---------------------------------------------------------------- per-process default Stack

_default: Stack | None = None
_default_lock = threading.Lock()


def default_stack() -> Stack:
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Stack()
        return _default


def _forget_default() -> None:  # a forked child must attach on its own
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_default)


def socket(family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0) -> IsoSocket:
    return default_stack().socket(family, type, proto)


def create_connection(address: tuple, timeout=_sentinel, source_address=None) -> IsoSocket:
    return default_stack().create_connection(address, timeout, source_address)

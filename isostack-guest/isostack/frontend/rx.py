"""The receive path: copy out of the socket's rx ring and publish the head; the dispatcher sees the new credits
itself.  The C extension copies in one call when data is there; the Python path (RingBuffer) serves the rest
and waits for data, EOF or an error."""

from __future__ import annotations

import errno

from .. import native
from ..layout import C_RX_HEAD, C_RX_TAIL, C_STATE, ST_CONNECTED, ST_EOF, ST_ERROR
from .errors import os_error
from .readiness import Readiness

C_RECV = native.FAST  # the extension's recv (None: no extension here)
C_RECV_INTO = getattr(native.FAST, "recv_into", None)  # an extension built before it existed lacks it


class RxPath(Readiness):
    """recv and recv_into (see the module docstring)."""

    def _wait_rx(self) -> None:
        words, control, head = self._words, self._control_word, self._rx_head
        ring = self._use_this_cpus_ring()
        if not self._stack.wait(
            lambda: words[control + C_RX_TAIL] != head or words[control + C_STATE] & (ST_EOF | ST_ERROR),
            self._deadline(), (self._owner,), ring,
        ):
            raise TimeoutError("timed out")

    def _buffered(self, want: int, zero_takes_data: bool) -> int:
        """How many bytes the next copy takes (up to `want`), 0 at EOF or for want == 0, -1 after a wait for
        data (the caller may try its fast path first).  Raises on an error, when not connected, or
        (non-blocking) when there is nothing yet.  zero_takes_data: recv(0) returns at once when data is
        buffered (recv_into with nothing to fill checks the socket's state first)."""
        words, control = self._words, self._control_word
        while True:
            if self._closed:
                raise os_error(errno.EBADF)
            head = self._rx_head
            avail = words[control + C_RX_TAIL] - head
            if avail > 0 and (want > 0 or zero_takes_data):
                return avail if avail <= want else want
            st = words[control + C_STATE]
            if st & ST_ERROR:
                self._check()
            if st & ST_EOF:
                if words[control + C_RX_TAIL] == head:  # EOF is published after the last data
                    return 0
                continue
            if not st & ST_CONNECTED:
                raise os_error(errno.ENOTCONN)
            if want == 0:
                return 0
            if self._gone:  # what the dispatcher had put into the ring was delivered above
                raise self._owner.gone_error()
            if self._timeout == 0.0:
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "no data")
            self._wait_rx()
            return -1

    def _consumed(self, k: int) -> None:
        """Publish the new head: the dispatcher sees the credits."""
        self._rx_head += k
        self._words[self._control_word + C_RX_HEAD] = self._rx_head

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if flags:
            raise os_error(errno.EOPNOTSUPP, "recv flags")
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if C_RECV is not None and not self._closed and bufsize > 0:
            data = C_RECV.recv(self._control_addr, self._rx_ring_addr, self._rx_size, self._rx_head, bufsize)
            if data:
                self._rx_head += len(data)
                return data
        while True:
            k = self._buffered(bufsize, True)
            if k < 0:
                continue
            if k == 0:
                return b""
            data = self._rx_ring.read(self._rx_head, k)
            self._consumed(k)
            return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Copy straight from the rx ring into buffer (the C fast path, else memoryview slices): no bytes
        object per call."""
        if flags:
            raise os_error(errno.EOPNOTSUPP, "recv flags")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        fast = C_RECV_INTO
        if fast is not None and not self._closed:
            try:
                k = fast(self._control_addr, self._rx_ring_addr, self._rx_size, self._rx_head, buffer, nbytes)
            except BufferError:  # not a contiguous buffer: the memoryview path below says what is wrong
                fast = None
            else:
                if k < 0:
                    raise ValueError("buffer too small for requested bytes")
                if k:
                    self._rx_head += k
                    return k
        mv = memoryview(buffer).cast("B")
        n = len(mv)
        if nbytes:
            if nbytes > n:
                raise ValueError("buffer too small for requested bytes")
            n = nbytes
        while True:
            k = self._buffered(n, False)
            if k < 0:
                if fast is not None and not self._closed:
                    k = fast(self._control_addr, self._rx_ring_addr, self._rx_size, self._rx_head, mv, n)
                    if k:
                        self._rx_head += k
                        return k
                continue
            if k:
                self._rx_ring.read_into(self._rx_head, mv[:k])
                self._consumed(k)
            return k

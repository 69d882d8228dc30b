"""A vhost-user connection: a Unix stream socket, SCM_RIGHTS fds, framing by protocol.MessageParser.

Non-blocking reads so one slow or hostile front-end cannot stall the event loop.
"""

from __future__ import annotations

import array
import os
import select
import socket

from .protocol import MAX_FDS, Message, MessageParser, ProtocolError


class Disconnected(Exception):
    """The peer closed the socket."""


def _fds_from_ancdata(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.parser = MessageParser()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Message]:
        """Read what is there (never blocks); returns complete messages. Raises Disconnected/ProtocolError."""
        out: list[Message] = []
        while True:
            want = self.parser.wanted()
            try:
                data, anc, flags, _ = self.sock.recvmsg(want, socket.CMSG_SPACE(MAX_FDS * 4))
            except (BlockingIOError, InterruptedError):
                return out
            except OSError as e:
                raise Disconnected(str(e)) from e
            fds = _fds_from_ancdata(anc)
            if flags & socket.MSG_CTRUNC:
                for fd in fds:
                    os.close(fd)
                raise ProtocolError("too many fds on one message (control data truncated)")
            if not data:
                if fds:
                    self.parser.feed(b"", fds)
                self.parser.close_pending()
                raise Disconnected("peer closed the connection")
            out.extend(self.parser.feed(data, fds))

    def send(self, data: bytes, fds: list[int] | None = None, timeout: float = 2.0) -> None:
        """Send a reply; waits (bounded) if the socket buffer is full."""
        view = memoryview(data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        while view:
            try:
                n = self.sock.sendmsg([view], anc)
            except (BlockingIOError, InterruptedError):
                _, w, _ = select.select([], [self.sock], [], timeout)
                if not w:
                    raise Disconnected("peer does not read its replies") from None
                continue
            except OSError as e:
                raise Disconnected(str(e)) from e
            anc = []
            view = view[n:]

    def close(self) -> None:
        self.parser.close_pending()
        self.sock.close()

"""A vhost-user connection: a Unix stream socket, SCM_RIGHTS fds, framing by protocol.MessageParser.

Non-blocking reads, a budget per read() call and non-blocking replies, so one slow or hostile front-end
cannot stall the event loop, keep it in one port or grow vhea's memory (docs/device-model.md, "Limits").
"""

from __future__ import annotations

import array
import os
import socket

from .protocol import MAX_FDS, Message, MessageParser, ProtocolError

#: read() returns after this many messages or bytes, even if more is there: the rest waits for the next loop
#: pass (the selector is level-triggered), so a peer writing without pause gets its share and no more
READ_BUDGET_MESSAGES = 64
READ_BUDGET_BYTES = 64 * 1024


class Disconnected(Exception):
    """The peer closed the socket (or must be closed: it does not read its replies)."""


class RepliesNotRead(Disconnected):
    """The peer's socket buffer is full of replies it did not read: vhea closes it rather than wait."""


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
        """Read what is there, up to the budget (never blocks); returns complete messages.

        Raises Disconnected/ProtocolError; then the fds of the messages parsed in this call are closed.
        """
        out: list[Message] = []
        try:
            self._read_into(out)
        except BaseException:
            for msg in out:
                msg.close_fds()
            raise
        return out

    def _read_into(self, out: list[Message]) -> None:
        budget = READ_BUDGET_BYTES
        while len(out) < READ_BUDGET_MESSAGES and budget > 0:
            want = self.parser.wanted()
            try:
                data, anc, flags, _ = self.sock.recvmsg(want, socket.CMSG_SPACE(MAX_FDS * 4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise Disconnected(str(e)) from e
            budget -= len(data) + 1  # +1: a zero-length read still costs
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

    def send(self, data: bytes, fds: list[int] | None = None) -> None:
        """Send a reply without waiting: a socket buffer full of unread replies means the peer does not read
        them (a well-behaved front-end waits for each reply), and waiting for it would stall every port."""
        view = memoryview(data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        while view:
            try:
                n = self.sock.sendmsg([view], anc)
            except InterruptedError:
                continue
            except BlockingIOError:
                raise RepliesNotRead("peer does not read its replies (socket buffer full)") from None
            except OSError as e:
                raise Disconnected(str(e)) from e
            anc = []
            view = view[n:]

    def close(self) -> None:
        self.parser.close_pending()
        self.sock.close()

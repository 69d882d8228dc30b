"""rr and crr: request / response in lock-step, every transaction timed on the client.

One client loop serves both tests (`TransactionClient`): rr keeps one connection for all its transactions,
crr opens one per transaction (the hello in front of the request) and closes it after the response, and the
clock runs from before the connect (crr) or the send (rr) to after the response.  On the server one
`Responder` per client connection checks the requests (--verify) and builds the responses for both tests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from . import sockets
from .errors import IsoperfError
from .protocol import CONTROL_TIMEOUT, HELLO, HELLO_MAGIC, RunParams
from .verify import RESPONSE_SEED, SEQ, MessageMaker, corrupted, pattern
from .workers import Worker


class TransactionClient(Worker):
    """The client's transaction loop, shared by rr (RRClient) and crr (CRRClient)."""

    connection_per_transaction = False  # crr: connect, request, response, close
    word = "response"  # a verification error: "connection I <word> SEQ: ..."
    closed_early = "the server closed the connection"

    def __init__(self, index: int, params: RunParams, stop: threading.Event, corrupt_at: int | None = None,
                 cpu: int | None = None):
        super().__init__(index, stop, cpu)
        self.params = params
        self.corrupt_at = corrupt_at
        self.sock = None  # rr: the connection of every transaction
        self.address: tuple[str, int] = ("", 0)  # crr: where each transaction connects
        self.connect_timeout = 0.0

    def loop(self) -> None:
        p = self.params
        size, rsize, verify, stack = p.size, p.rsize, p.verify, p.stack
        per_transaction = self.connection_per_transaction
        prefix = HELLO.pack(HELLO_MAGIC, self.index) if per_transaction else b""
        req_maker = MessageMaker(self.index, size) if verify else None
        resp_maker = MessageMaker(self.index + RESPONSE_SEED, rsize) if verify else None
        plain = prefix + pattern(self.index, size)
        view = memoryview(bytearray(rsize))
        connect, (host, port), timeout = sockets.connect, self.address, self.connect_timeout
        recv_exact, stop = sockets.recv_exact, self.stop
        append, clock = self.samples.append, time.perf_counter_ns
        moved = size + rsize
        seq = 0
        while not stop.is_set():
            msg = prefix + corrupted(req_maker.message(seq), self.corrupt_at, seq, size) if verify else plain
            t0 = clock()
            sock = connect(host, port, timeout, stack) if per_transaction else self.sock
            try:
                if per_transaction:
                    sock.settimeout(None)
                sock.sendall(msg)
                if not recv_exact(sock, view, rsize):
                    raise IsoperfError(self.closed_early)
            finally:
                if per_transaction:
                    sock.close()
            append(clock() - t0)
            if verify:
                problem = resp_maker.check(view, seq)
                if problem:
                    self.verify_error(f"connection {self.index} {self.word} {seq}: {problem}")
            seq += 1
            self.count = seq
            self.bytes += moved


class RRClient(TransactionClient):
    """Request (size) / response (response size) in lock-step on one connection, each transaction timed."""

    what = "request/response"

    def __init__(self, sock, index: int, params: RunParams, stop: threading.Event, corrupt_at: int | None = None,
                 cpu: int | None = None):
        super().__init__(index, params, stop, corrupt_at, cpu)
        self.sock = sock


class CRRClient(TransactionClient):
    """Per transaction: connect, hello + request, response, close; timed from connect to close."""

    what = "connect/request/response"
    connection_per_transaction = True
    word = "transaction"
    closed_early = "the server closed the connection before its response"

    def __init__(self, host: str, port: int, index: int, params: RunParams, stop: threading.Event,
                 connect_timeout: float, corrupt_at: int | None = None, cpu: int | None = None):
        super().__init__(index, params, stop, corrupt_at, cpu)
        self.address = (host, port)
        self.connect_timeout = connect_timeout


class Responder:
    """The server's half of the transactions of one client connection: the plain response, or (--verify) the
    request checked and the response that carries its sequence number."""

    def __init__(self, conn: int, params: RunParams, corrupt_at: int | None, word: str,
                 report: Callable[[str], None]):
        self.conn = conn
        self.rsize = params.rsize
        self.verify = params.verify
        self.corrupt_at = corrupt_at
        self.word = word  # a verification error: "connection I <word> SEQ: ..."
        self.report = report
        self.plain = pattern(conn + RESPONSE_SEED, params.rsize)
        if params.verify:
            self.request_maker = MessageMaker(conn, params.size)
            self.response_maker = MessageMaker(conn + RESPONSE_SEED, params.rsize)

    def respond(self, request, seq: int | None) -> bytes:
        """The response to `request`; seq None: whatever sequence number the request carries (crr)."""
        if not self.verify:
            return self.plain
        problem = self.request_maker.check(request, seq)
        if seq is None:
            (seq,) = SEQ.unpack_from(request)
        if problem:
            self.report(f"connection {self.conn} {self.word} {seq}: {problem}")
        return corrupted(self.response_maker.message(seq), self.corrupt_at, seq, self.rsize)


class RRServer(Worker):
    """Answers each size-byte request with a response-size message, until the client's EOF."""

    what = "request/response"

    def __init__(self, sock, index: int, params: RunParams, corrupt_at: int | None = None):
        super().__init__(index)
        self.sock = sock
        self.params = params
        self.corrupt_at = corrupt_at

    def loop(self) -> None:
        p = self.params
        size, verify = p.size, p.verify
        responder = Responder(self.index, p, self.corrupt_at, "request", self.verify_error)
        plain = responder.plain
        view = memoryview(bytearray(size))
        sock, moved, recv_exact = self.sock, size + p.rsize, sockets.recv_exact
        seq = 0
        while recv_exact(sock, view, size):
            sock.sendall(responder.respond(view, seq) if verify else plain)
            seq += 1
            self.count = seq
            self.bytes += moved

    def finish(self) -> None:
        self.sock.close()


class CRRServer(Worker):
    """Accepts connections from a shared listener: hello + request in, response out, close (server first)."""

    what = "accept/request/response"

    def __init__(self, listener: socket.socket, index: int, params: RunParams, stop: threading.Event,
                 corrupt_at: int | None = None):
        super().__init__(index, stop)
        self.listener = listener
        self.params = params
        self.corrupt_at = corrupt_at
        self.per_connection: dict[int, int] = {}  # client connection index -> transactions served

    def loop(self) -> None:
        p = self.params
        size = p.size
        responders: dict[int, Responder] = {}
        view = memoryview(bytearray(HELLO.size + size))
        stop, listener = self.stop, self.listener
        moved = size + p.rsize
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(CONTROL_TIMEOUT)
                sockets.set_nodelay(sock)
                if not sockets.recv_exact(sock, view, HELLO.size + size):
                    continue
                magic, conn = HELLO.unpack_from(view)
                if magic != HELLO_MAGIC or conn >= p.connections:
                    self.verify_error(f"a connection with a bad hello (magic {magic!r}, index {conn})")
                    continue
                responder = responders.get(conn)
                if responder is None:
                    corrupt = self.corrupt_at if conn == 0 else None
                    responder = responders[conn] = Responder(conn, p, corrupt, "transaction", self.verify_error)
                sock.sendall(responder.respond(view[HELLO.size :], None))
            self.per_connection[conn] = self.per_connection.get(conn, 0) + 1
            self.count += 1
            self.bytes += moved

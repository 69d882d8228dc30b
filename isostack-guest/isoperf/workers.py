"""Per-connection loops in threads: the worker base and the stream workers (Sender, Receiver).

The request/response workers (rr, crr) are in transactions.py.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from typing import NamedTuple

from . import sendloop
from .errors import IsoperfError
from .protocol import RunParams
from .verify import MAX_ERRORS, MessageMaker, StreamVerifier, corrupted, pattern

RECV_CHUNK = 256 * 1024


class Progress(NamedTuple):
    """A worker's counters so far, read by the control thread at the marks."""

    bytes: int  # payload bytes moved (rr/crr: requests + responses)
    count: int  # messages (stream/maerts) or transactions (rr/crr)


class Worker(threading.Thread):
    """One connection's loop in a thread. The control thread reads `bytes`, `count` and `len(samples)` at the
    marks (plain attribute reads: the GIL makes each one consistent)."""

    what = "transfer"

    def __init__(self, index: int, stop: threading.Event | None = None, cpu: int | None = None):
        super().__init__(daemon=True, name=f"isoperf-{type(self).__name__.lower()}{index}")
        self.index = index
        self.stop = stop or threading.Event()
        self.cpu = cpu
        self.bytes = 0  # payload bytes moved by this worker (rr/crr: requests + responses)
        self.count = 0  # messages (stream/maerts) or transactions (rr/crr)
        self.samples = array("q")  # rr/crr client: latency of every transaction, ns
        self.errors: list[str] = []  # verification errors (the first MAX_ERRORS)
        self.error: str | None = None  # I/O failure

    def run(self) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})
        try:
            self.loop()
        except (OSError, IsoperfError) as e:
            if not self.stop.is_set() or not isinstance(e, OSError):
                self.error = f"connection {self.index}: {self.what} failed: {e}"
        finally:
            self.finish()

    def loop(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def progress(self) -> Progress:
        return Progress(self.bytes, self.count)

    def verify_error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)


def join_all(workers: list[threading.Thread], timeout: float) -> None:
    """Join the workers within one deadline for all of them: one by one with the whole timeout each, 16 stuck
    connections (TCP in RTO back-off under TCG) would hold the control exchange for minutes and the peer's control
    timeout would end the session; a worker still alive after it is reported ("did not stop in time")."""
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))


class Sender(Worker):
    """Sends size-byte messages, one sendall call each, until told to stop (STREAM client, MAERTS server).

    Without --verify the loop around the calls runs in C where the extension is built (sendloop.py,
    `loop="c"`), as netperf's does: the same sendall is called per message for both stacks, only the
    interpreter's cost per iteration is gone.  `loop="python"` keeps the Python loop (A/B runs, and where the
    extension is missing); --verify always loops in Python (every message is different)."""

    what = "send"

    def __init__(self, sock, index: int, params: RunParams, stop: threading.Event, corrupt_at: int | None = None,
                 cpu: int | None = None, loop: str = "auto"):
        super().__init__(index, stop, cpu)
        self.sock = sock
        self.params = params
        self.corrupt_at = corrupt_at
        self.loop_kind = sendloop.resolve(loop) if not params.verify else "python"
        self._calls = array("Q", [0])  # the C loop's progress, live

    def loop(self) -> None:
        if self.params.verify:
            self._run_verify()
        elif self.loop_kind == "c":
            self._run_c()
        else:
            self._run_plain()

    def progress(self) -> Progress:
        if self.loop_kind == "c":
            n = self._calls[0]
            return Progress(n * self.params.size, n)
        return Progress(self.bytes, self.count)

    def _run_c(self) -> None:
        msg = pattern(self.index, self.params.size)
        try:
            sendloop.load()(self.sock.sendall, msg, self.stop.is_set, self._calls)
        finally:
            self.count = n = self._calls[0]
            self.bytes = n * self.params.size

    def _run_plain(self) -> None:
        msg = pattern(self.index, self.params.size)
        sendall, stop, size = self.sock.sendall, self.stop, self.params.size
        n = 0
        while not stop.is_set():
            sendall(msg)
            n += 1
            self.count = n
            self.bytes = n * size

    def _run_verify(self) -> None:
        maker = MessageMaker(self.index, self.params.size)
        size = self.params.size
        seq = 0
        while not self.stop.is_set():
            self.sock.sendall(corrupted(maker.message(seq), self.corrupt_at, seq, size))
            seq += 1
            self.count = seq
            self.bytes = seq * size


class Receiver(Worker):
    """Counts (and optionally verifies) what one data connection delivers, until EOF (STREAM server, MAERTS
    client)."""

    what = "receive"

    def __init__(self, sock, index: int, params: RunParams, cpu: int | None = None):
        super().__init__(index, cpu=cpu)
        self.sock = sock
        self.size = params.size
        self.verifier = StreamVerifier(index, params.size) if params.verify else None

    def loop(self) -> None:
        buf = bytearray(RECV_CHUNK)
        view = memoryview(buf)
        recv_into, verifier = self.sock.recv_into, self.verifier
        while True:
            n = recv_into(buf)
            if n == 0:
                break
            self.bytes += n
            self.count = self.bytes // self.size
            if verifier is not None:
                verifier.feed(view[:n])

    def finish(self) -> None:
        if self.verifier is not None:
            self.verifier.finish()
            self.errors = self.verifier.errors
        self.sock.close()

"""Helpers of the chaos tests (tests/test_chaos_*.py): verifiable byte streams and process handling.

A stream is the bytes of a seeded random block of a prime length (65521) repeated: byte i of stream `seed` is
block(seed)[i % 65521], so a lost, repeated or shifted byte anywhere fails the check.  The applications the
tests start as subprocesses build the same block with STREAM_SNIPPET."""

from __future__ import annotations

import ast
import errno
import queue
import random
import signal
import socket
import subprocess
import threading
import time

BLOCK_LEN = 65521

# The same stream in an application's script (it imports nothing of the tests).
STREAM_SNIPPET = """
import random
BLOCK_LEN = 65521
def stream_chunk(seed, offset, n, _blocks={}):
    block = _blocks.get(seed)
    if block is None:
        block = _blocks[seed] = random.Random(seed).randbytes(BLOCK_LEN) * (2 + (1 << 20) // BLOCK_LEN)
    i = offset % BLOCK_LEN
    return block[i:i + n]
"""


def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_LEN) * (2 + (1 << 20) // BLOCK_LEN)


def stream_chunk(seed: int, offset: int, n: int) -> bytes:
    """Bytes offset..offset+n of stream `seed` (n up to 1 MiB)."""
    i = offset % BLOCK_LEN
    return _block(seed)[i:i + n]


class StreamChecker:
    """Checks every byte received of stream `seed`, in order, from its start."""

    def __init__(self, seed: int) -> None:
        self.block = _block(seed)
        self.offset = 0

    def feed(self, data: bytes) -> None:
        for start in range(0, len(data), 1 << 19):
            part = data[start:start + (1 << 19)]
            i = self.offset % BLOCK_LEN
            if part != self.block[i:i + len(part)]:
                bad = next(k for k in range(len(part)) if part[k] != self.block[i + k])
                raise AssertionError(f"stream byte {self.offset + bad} differs")
            self.offset += len(part)


def read_stream(conn: socket.socket, checker: StreamChecker, limit: int | None = None, timeout: float = 30.0,
                ) -> bool:
    """Read and check until EOF (True), a reset (True: a dead peer's kernel may reset), or `limit` bytes
    checked (False)."""
    conn.settimeout(timeout)
    while limit is None or checker.offset < limit:
        want = 1 << 16 if limit is None else min(1 << 16, limit - checker.offset)
        try:
            data = conn.recv(want)
        except ConnectionResetError:
            return True
        if not data:
            return True
        checker.feed(data)
    return False


def wait_connectable(path: str, timeout: float = 10.0) -> None:
    """Until a unix SEQPACKET socket at `path` accepts connections (a restarted daemon replaced a stale one)."""
    deadline = time.monotonic() + timeout
    while True:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(path)
            return
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT) or time.monotonic() > deadline:
                raise
        finally:
            probe.close()
        time.sleep(0.02)


def maps_with_memfd(pid: int) -> int:
    """How many mappings of application memory (isostack memfds) process `pid` has."""
    with open(f"/proc/{pid}/maps") as f:
        return sum("memfd:isostack" in line for line in f)


def kill_and_reap(process) -> None:
    """SIGKILL a subprocess.Popen (if it still runs) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(10)


class Lines:
    """The lines a subprocess prints, with a timeout (an application that hangs fails the test, not the run)."""

    def __init__(self, stream) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put("")

    def next(self, timeout: float = 30.0) -> str:
        """The next line, stripped ("" at EOF); AssertionError when none comes in time."""
        try:
            return self._queue.get(timeout=timeout).strip()
        except queue.Empty:
            raise AssertionError(f"no line from the process in {timeout} s") from None

    def ready(self) -> list[str]:
        """The lines printed so far and not read yet, stripped (no wait)."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get().strip())
        return out


# An application streaming stream `seed` to 127.0.0.1:port through the front-end until its stdin says "stop";
# then it closes the socket and prints "sent N" (ISOSTACK_SOCKET names the attach socket).
STREAMER = STREAM_SNIPPET + """
import sys, threading
from isostack import frontend as iso
port, seed = int(sys.argv[1]), int(sys.argv[2])
s = iso.create_connection(("127.0.0.1", port), timeout=30)
print("ready", flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
offset = 0
while not stop.is_set():
    s.sendall(stream_chunk(seed, offset, 16384))
    offset += 16384
s.close()
print("sent", offset, flush=True)
"""


class StreamReader:
    """A thread reading and checking stream `seed` from a kernel connection until EOF (see read_stream)."""

    def __init__(self, conn: socket.socket, seed: int) -> None:
        self.conn = conn
        self.checker = StreamChecker(seed)
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            read_stream(self.conn, self.checker)
            self.ended_at = time.monotonic()
        except BaseException as e:  # the test asserts it
            self.error = e

    @property
    def offset(self) -> int:
        return self.checker.offset

    def wait_for(self, offset: int, timeout: float = 30.0) -> None:
        """Until `offset` bytes arrived verified (AssertionError: not in time, or the stream ended or failed)."""
        deadline = time.monotonic() + timeout
        while self.checker.offset < offset:
            assert self.thread.is_alive(), f"stream ended at {self.checker.offset} ({self.error!r})"
            assert time.monotonic() < deadline, f"only {self.checker.offset} of {offset} bytes in {timeout} s"
            time.sleep(0.01)

    def join(self, timeout: float = 30.0) -> int:
        """Until EOF; the verified byte count."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"no EOF in {timeout} s (at byte {self.checker.offset})"
        if self.error is not None:
            raise self.error
        self.conn.close()
        return self.checker.offset


def isostackd_stats(daemon: subprocess.Popen, log: Lines) -> dict:
    """The counters of a running isostackd (SIGUSR1 logs them)."""
    daemon.send_signal(signal.SIGUSR1)
    while True:
        line = log.next(timeout=10)
        assert line, "isostackd's log ended"
        if "stats: " in line:
            return ast.literal_eval(line.split("stats: ", 1)[1])

"""isoperf: a netperf-style load generator with a JSON-lines control connection.

Stdlib only with ``--stack legacy``: it runs inside the guests as ``python3 -m isostack.isoperf`` from an
uploaded copy. ``--stack iso`` imports ``isostack.frontend`` (lazily) and needs a running ``isostackd``
(its socket: ISOSTACK_SOCKET, default /run/isostack/isostackd.sock).

Usage::

    isoperf server [--bind ADDR] [--port 5701] [--once]
    isoperf client --host H [--port 5701] [--test stream|maerts|rr|crr] [--size 1448] [--response-size S]
                   [--duration 10] [--warmup 1] [--repeats 1] [--connections 1] [--stack legacy|iso]
                   [--cpu N] [--verify] [--send-loop auto|c|python] [--sndbuf BYTES] [--json]

Tests (the client's view):

- ``stream``: the client sends size-byte messages; the figure is what the server received between the marks.
- ``maerts``: the server sends, the client receives (and verifies); the figure is what the client received.
- ``rr``: each connection does request (size) / response (response size, default = size) in lock-step;
  transactions/s and latency percentiles (p50/p90/p99/p99.9/max, µs, every transaction timed with
  perf_counter_ns on the client).
- ``crr``: per transaction connect, request, response, close (the server closes after its response).

Control protocol (one JSON object per line on the control TCP connection, client -> server unless noted):

1. ``{"type": "start", "version": 2, "test": T, "stack": S, "size": N, "response_size": R, "connections": C,
   "duration": D, "warmup": W, "repeats": K, "verify": bool}``
2. server -> ``{"type": "ready", "data_port": P}`` (a listener for this session only) or
   ``{"type": "error", "message": "..."}`` (unknown test/stack/version, bad values).
3. stream/maerts/rr: the client opens C data connections to P; each starts with an 8-byte hello
   (b"ISOP" + u32 index). crr: every transaction's connection starts with that hello. server ->
   ``{"type": "accepted"}`` once all C are in (crr: at once).
4. The client is the timekeeper: it loads the connections, and after the warm-up sends
   ``{"type": "mark", "phase": "begin"}``, after each of the first K-1 measured intervals
   ``{"type": "mark", "phase": "split"}`` and after the last ``{"type": "mark", "phase": "end"}``.
   Each side snapshots its counters and /proc/stat when it sends/receives a mark; the receiving side's
   counters make the throughput figure (the server's for stream, the client's for the others).
5. The client stops, half-closes the data connections and sends ``{"type": "done", "sent_bytes": B,
   "transactions": [per connection]}``.
6. server -> ``{"type": "result", "bytes": ..., "elapsed": ..., "cpu": {...}, "intervals": [...],
   "total_bytes": ..., "sent_bytes": ..., "transactions": [...], "verified": bool|null, "errors": [...]}``
   after every data connection ended.

"stack": "iso" routes the client's *data* connections through the IsoStack front-end
(``isostack.frontend.create_connection``); the control connection stays a kernel socket, and the server
serves kernel sockets whatever the stack (IsoStack is the client side's stack in every test).

Client output (``--json``): test, stack, size, response_size, connections, duration (the measured interval,
s), requested_duration, warmup, repeats, bytes (payload carried in that interval: received by the server for
stream, by the client for maerts, requests + responses for rr/crr), messages (stream/maerts: bytes // size;
rr/crr: transactions), throughput_bps, messages_per_s, cpu {"client": {"all": %, "cpu0": %, ...},
"server": {...}} (busy % from /proc/stat over the measured intervals, warm-up excluded), send_loop (stream:
"c" or "python", the loop around the per-message sendall calls; null for the other tests), sndbuf (--sndbuf or
null), verified (null
without --verify), errors (a non-empty list means exit 1), client_sent_bytes, client_total_bytes,
server_total_bytes (whole run incl. warm-up, the sender's and the receiver's count; they must be equal);
rr/crr add transactions, transactions_per_s, latency_us {p50, p90, p99, p99.9, max, min, mean, samples};
intervals (one entry per repeat, the same figures) and summary {figure: {mean, stddev}} over the repeats.
The top-level figures cover all K intervals together (they are back to back).

Payload verification (``--verify``): every message is ``seq (u64 BE) | pattern | crc32 (u32 BE)`` where the
pattern is derived from the connection index and seq (responses use a pattern of their own, so an echo
does not pass); the receiving side checks order, pattern and checksum of everything (warm-up included), so
a single wrong byte fails the run. rr/crr: the server checks requests, the client checks responses and that
each response carries its request's sequence number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import socket
import statistics
import struct
import sys
import threading
import time
import zlib
from array import array
from dataclasses import asdict, dataclass

PROTOCOL_VERSION = 2
DEFAULT_PORT = 5701
TESTS = ("stream", "maerts", "rr", "crr")
TRANSACTION_TESTS = ("rr", "crr")
STACKS = ("legacy", "iso")
KNOWN_STACKS = ("legacy", "iso")
HELLO_MAGIC = b"ISOP"
HELLO = struct.Struct("!4sI")
SEQ = struct.Struct("!Q")
CRC = struct.Struct("!I")
VERIFY_OVERHEAD = SEQ.size + CRC.size
MIN_VERIFY_SIZE = VERIFY_OVERHEAD + 1
MAX_SIZE = 1 << 20
MAX_REPEATS = 100
RECV_CHUNK = 256 * 1024
CONTROL_TIMEOUT = 30.0
MAX_ERRORS = 10
RESPONSE_SEED = 1000  # responses' pattern: that of connection index + this (131 * 1000 % 256 != 0: never the
# request pattern of the same connection)
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


class IsoperfError(Exception):
    """An error to report to the user as one line, without a traceback."""


# ---------------------------------------------------------------- /proc/stat


@dataclass(frozen=True)
class CpuTimes:
    """Jiffies of one CPU line of /proc/stat, reduced to what busy % needs."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """Parse the cpu lines of /proc/stat into {"all": ..., "cpu0": ..., ...}.

    Idle and iowait count as not busy; guest/guest_nice are already included in user/nice, so they are
    left out of the total to avoid counting them twice.
    """
    cpus: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        values = [int(v) for v in fields[:8]]
        if len(values) < 4:
            raise ValueError(f"short /proc/stat line: {line!r}")
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        total = user + nice + system + idle + iowait + irq + softirq + steal
        cpus["all" if name == "cpu" else name] = CpuTimes(busy=total - idle - iowait, total=total)
    if not cpus:
        raise ValueError("no cpu lines in /proc/stat text")
    return cpus


def read_proc_stat(path: str = "/proc/stat") -> dict[str, CpuTimes]:
    with open(path) as f:
        return parse_proc_stat(f.read())


def cpu_busy_percent(before: dict[str, CpuTimes], after: dict[str, CpuTimes]) -> dict[str, float]:
    """Busy % per CPU between two snapshots (CPUs missing from either snapshot are skipped)."""
    result: dict[str, float] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            continue
        total = a.total - b.total
        result[name] = round(100.0 * (a.busy - b.busy) / total, 2) if total > 0 else 0.0
    return result


# ---------------------------------------------------------------- latency statistics


def latency_summary(samples_ns) -> dict:
    """Percentiles (nearest rank), min, max and mean of per-transaction latencies, in microseconds."""
    data = sorted(samples_ns)
    n = len(data)
    if n == 0:
        return {name: None for name, _ in PERCENTILES} | {"max": None, "min": None, "mean": None, "samples": 0}
    out = {}
    for name, p in PERCENTILES:
        rank = max(1, math.ceil(p * n / 100.0 - 1e-9))  # nearest rank; the epsilon absorbs 99.9 * n rounding
        out[name] = round(data[rank - 1] / 1000.0, 3)
    out["max"] = round(data[-1] / 1000.0, 3)
    out["min"] = round(data[0] / 1000.0, 3)
    out["mean"] = round(sum(data) / n / 1000.0, 3)
    out["samples"] = n
    return out


def mean_stddev(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "stddev": None}
    return {
        "mean": round(statistics.fmean(vals), 3),
        "stddev": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
    }


# ---------------------------------------------------------------- payload


def _pattern(conn_index: int, length: int) -> bytes:
    """A non-trivial byte pattern (so shifted or zeroed data cannot match)."""
    seed = (conn_index * 131 + 7) & 0xFF
    return bytes((seed + i * 13 + (i >> 8)) & 0xFF for i in range(length))


class MessageMaker:
    """Builds the verifiable messages of one connection: seq | pattern slice | crc32."""

    def __init__(self, conn_index: int, size: int):
        if size < MIN_VERIFY_SIZE:
            raise ValueError(f"--verify needs --size >= {MIN_VERIFY_SIZE}")
        self.size = size
        self.body = size - VERIFY_OVERHEAD
        self.pattern = _pattern(conn_index, self.body + 256)

    def expected_body(self, seq: int) -> bytes:
        off = seq & 0xFF
        return self.pattern[off : off + self.body]

    def message(self, seq: int) -> bytes:
        head = SEQ.pack(seq) + self.expected_body(seq)
        return head + CRC.pack(zlib.crc32(head))

    def check(self, msg, seq: int | None) -> str | None:
        """What is wrong with one whole message (None: nothing); seq None accepts any sequence number."""
        body_end = self.size - CRC.size
        (got_seq,) = SEQ.unpack_from(msg)
        (got_crc,) = CRC.unpack_from(msg, body_end)
        if seq is not None and got_seq != seq:
            return f"sequence number {got_seq}, expected {seq}"
        if msg[SEQ.size : body_end] != self.expected_body(got_seq):
            return "payload differs from the expected pattern"
        if zlib.crc32(msg[:body_end]) != got_crc:
            return "checksum mismatch"
        return None


def _corrupted(msg: bytes, offset: int | None, seq: int, size: int) -> bytes:
    """Test hook: msg with one bit flipped if stream offset `offset` falls inside message `seq`."""
    if offset is None or not seq * size <= offset < (seq + 1) * size:
        return msg
    b = bytearray(msg)
    b[offset - seq * size] ^= 0x01
    return bytes(b)


class StreamVerifier:
    """Checks a received byte stream message by message; keeps the first few errors, never raises."""

    def __init__(self, conn_index: int, size: int):
        self.maker = MessageMaker(conn_index, size)
        self.conn_index = conn_index
        self.size = size
        self.pending = bytearray()
        self.next_seq = 0
        self.errors: list[str] = []

    def feed(self, data: bytes | memoryview) -> None:
        self.pending += data
        size = self.size
        n = len(self.pending) // size
        if n == 0:
            return
        view = memoryview(self.pending)
        try:
            for i in range(n):
                self._check(view[i * size : (i + 1) * size])
        finally:
            view.release()
        del self.pending[: n * size]

    def _check(self, msg: memoryview) -> None:
        seq = self.next_seq
        self.next_seq += 1
        if len(self.errors) >= MAX_ERRORS:
            return
        problem = self.maker.check(msg, seq)
        if problem:
            where = f"connection {self.conn_index} message {seq} (stream offset {seq * self.size})"
            self.errors.append(f"{where}: {problem}")

    def finish(self) -> None:
        if self.pending and len(self.errors) < MAX_ERRORS:
            self.errors.append(
                f"connection {self.conn_index}: stream ended inside a message ({len(self.pending)} stray bytes)"
            )


def _recv_exact(sock, view: memoryview, n: int) -> bool:
    """Fill view[:n] from sock; False on EOF before the first byte, IsoperfError on EOF inside it."""
    got = sock.recv_into(view, n)
    if got == n:
        return True
    if got == 0:
        return False
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise IsoperfError(f"connection closed inside a message ({got} of {n} bytes)")
        got += k
    return True


# ---------------------------------------------------------------- control channel


class Control:
    """JSON lines over a TCP socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def send(self, **msg) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self, timeout: float | None = CONTROL_TIMEOUT) -> dict:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise IsoperfError("timed out waiting for the peer on the control connection") from None
            if not chunk:
                raise IsoperfError("the peer closed the control connection")
            self.buf += chunk
            if len(self.buf) > 1 << 20:
                raise IsoperfError("control message too long")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as e:
            raise IsoperfError(f"bad control message: {e}") from None
        if not isinstance(msg, dict) or "type" not in msg:
            raise IsoperfError(f"bad control message: {line[:200]!r}")
        return msg

    def expect(self, kind: str, timeout: float | None = CONTROL_TIMEOUT) -> dict:
        msg = self.recv(timeout)
        if msg["type"] == "error":
            raise IsoperfError(f"server: {msg.get('message', 'unknown error')}")
        if msg["type"] != kind:
            raise IsoperfError(f"expected {kind!r} on the control connection, got {msg['type']!r}")
        return msg


# ---------------------------------------------------------------- test parameters


@dataclass(frozen=True)
class RunParams:
    test: str = "stream"
    stack: str = "legacy"
    size: int = 1448
    connections: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    verify: bool = False
    response_size: int | None = None  # rr/crr; None: the same as size
    repeats: int = 1

    @property
    def rsize(self) -> int:
        return self.size if self.response_size is None else self.response_size

    def check(self) -> None:
        """Raise IsoperfError for values no test can run with (shared by client args and server)."""
        if self.test not in TESTS:
            raise IsoperfError(f"test {self.test!r} is not implemented (available: {', '.join(TESTS)})")
        if self.stack not in STACKS:
            if self.stack in KNOWN_STACKS:
                raise IsoperfError(f"stack {self.stack!r} is not implemented yet")
            raise IsoperfError(f"unknown stack {self.stack!r} (choose from {', '.join(KNOWN_STACKS)})")
        if not 1 <= self.size <= MAX_SIZE:
            raise IsoperfError(f"size must be between 1 and {MAX_SIZE}, got {self.size}")
        if self.response_size is not None:
            if self.test not in TRANSACTION_TESTS:
                raise IsoperfError(f"response size applies to rr and crr, not {self.test}")
            if not 1 <= self.response_size <= MAX_SIZE:
                raise IsoperfError(f"response size must be between 1 and {MAX_SIZE}, got {self.response_size}")
        if self.verify and min(self.size, self.rsize) < MIN_VERIFY_SIZE:
            raise IsoperfError(
                f"verification needs size >= {MIN_VERIFY_SIZE} (seq + crc32), got {min(self.size, self.rsize)}"
            )
        if not 1 <= self.connections <= 256:
            raise IsoperfError(f"connections must be between 1 and 256, got {self.connections}")
        if not self.duration > 0:
            raise IsoperfError(f"duration must be > 0, got {self.duration}")
        if not self.warmup >= 0:
            raise IsoperfError(f"warmup must be >= 0, got {self.warmup}")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise IsoperfError(f"repeats must be between 1 and {MAX_REPEATS}, got {self.repeats}")

    @classmethod
    def from_message(cls, msg: dict) -> RunParams:
        try:
            rs = msg.get("response_size")
            params = cls(
                test=str(msg["test"]),
                stack=str(msg.get("stack", "legacy")),
                size=int(msg["size"]),
                connections=int(msg["connections"]),
                duration=float(msg["duration"]),
                warmup=float(msg.get("warmup", 0)),
                verify=bool(msg.get("verify", False)),
                response_size=None if rs is None else int(rs),
                repeats=int(msg.get("repeats", 1)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IsoperfError(f"bad start message: {e!r}") from None
        params.check()
        return params


# ---------------------------------------------------------------- per-connection loops (both sides)


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

    def progress(self) -> tuple[int, int]:
        """(bytes, count) so far, read by the control thread at the marks."""
        return self.bytes, self.count

    def verify_error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)


class Sender(Worker):
    """Sends size-byte messages, one sendall call each, until told to stop (STREAM client, MAERTS server).

    Without --verify the loop around the calls runs in C where isostack's native parts are built
    (_sendloop.c, `loop="c"`), as netperf's does: the same sendall is called per message for both stacks, only
    the interpreter's cost per iteration is gone.  `loop="python"` keeps the Python loop (A/B runs, and
    where the extension is missing); --verify always loops in Python (every message is different)."""

    what = "send"

    def __init__(self, sock, index: int, params: RunParams, stop: threading.Event, corrupt_at: int | None = None,
                 cpu: int | None = None, loop: str = "auto"):
        super().__init__(index, stop, cpu)
        self.sock = sock
        self.params = params
        self.corrupt_at = corrupt_at
        self.loop_kind = resolve_send_loop(loop) if not params.verify else "python"
        self._calls = array("Q", [0])  # the C loop's progress, live

    def loop(self) -> None:
        if self.params.verify:
            self._run_verify()
        elif self.loop_kind == "c":
            self._run_c()
        else:
            self._run_plain()

    def progress(self) -> tuple[int, int]:
        if self.loop_kind == "c":
            n = self._calls[0]
            return n * self.params.size, n
        return self.bytes, self.count

    def _run_c(self) -> None:
        msg = _pattern(self.index, self.params.size)
        try:
            _send_loop()(self.sock.sendall, msg, self.stop.is_set, self._calls)
        finally:
            self.count = n = self._calls[0]
            self.bytes = n * self.params.size

    def _run_plain(self) -> None:
        msg = _pattern(self.index, self.params.size)
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
            self.sock.sendall(_corrupted(maker.message(seq), self.corrupt_at, seq, size))
            seq += 1
            self.count = seq
            self.bytes = seq * size


SEND_LOOPS = ("auto", "c", "python")
_SEND_LOOP: list = []  # the loaded C function (or None), once


def _send_loop():
    """isoperf's C send loop (_sendloop.c), or None where isostack's native parts are neither built nor buildable
    (isoperf is stdlib-only for the legacy stack)."""
    if not _SEND_LOOP:
        fn = None
        try:
            from .native import load_sendloop  # builds it first where gcc is (host, tests)

            mod = load_sendloop()
        except Exception:  # no native parts at all here (another Python, no .so uploaded)
            mod = None
        if mod is not None:
            fn = mod.send_loop
        _SEND_LOOP.append(fn)
    return _SEND_LOOP[0]


def resolve_send_loop(choice: str) -> str:
    """auto -> c where the C loop loads, else python; c where it does not load is an error."""
    if choice not in SEND_LOOPS:
        raise IsoperfError(f"unknown send loop {choice!r} (one of {', '.join(SEND_LOOPS)})")
    if choice == "python":
        return "python"
    if _send_loop() is not None:
        return "c"
    if choice == "c":
        raise IsoperfError("the C send loop is not available here (isostack/_sendloop*.so is neither built nor "
                           "buildable: run `python -m isostack.native` on a host with gcc)")
    return "python"


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


class RRClient(Worker):
    """Request (size) / response (response size) in lock-step on one connection, each transaction timed."""

    what = "request/response"

    def __init__(self, sock, index: int, params: RunParams, stop: threading.Event, corrupt_at: int | None = None,
                 cpu: int | None = None):
        super().__init__(index, stop, cpu)
        self.sock = sock
        self.params = params
        self.corrupt_at = corrupt_at

    def loop(self) -> None:
        p = self.params
        size, rsize, verify = p.size, p.rsize, p.verify
        req_maker = MessageMaker(self.index, size) if verify else None
        resp_maker = MessageMaker(self.index + RESPONSE_SEED, rsize) if verify else None
        plain = _pattern(self.index, size)
        view = memoryview(bytearray(rsize))
        sendall, stop, sock = self.sock.sendall, self.stop, self.sock
        append, clock = self.samples.append, time.perf_counter_ns
        moved = size + rsize
        seq = 0
        while not stop.is_set():
            msg = _corrupted(req_maker.message(seq), self.corrupt_at, seq, size) if verify else plain
            t0 = clock()
            sendall(msg)
            if not _recv_exact(sock, view, rsize):
                raise IsoperfError("the server closed the connection")
            append(clock() - t0)
            if verify:
                problem = resp_maker.check(view, seq)
                if problem:
                    self.verify_error(f"connection {self.index} response {seq}: {problem}")
            seq += 1
            self.count = seq
            self.bytes += moved


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
        size, rsize, verify = p.size, p.rsize, p.verify
        req_maker = MessageMaker(self.index, size) if verify else None
        resp_maker = MessageMaker(self.index + RESPONSE_SEED, rsize) if verify else None
        plain = _pattern(self.index + RESPONSE_SEED, rsize)
        view = memoryview(bytearray(size))
        sock, moved = self.sock, size + rsize
        seq = 0
        while _recv_exact(sock, view, size):
            if verify:
                problem = req_maker.check(view, seq)
                if problem:
                    self.verify_error(f"connection {self.index} request {seq}: {problem}")
                sock.sendall(_corrupted(resp_maker.message(seq), self.corrupt_at, seq, rsize))
            else:
                sock.sendall(plain)
            seq += 1
            self.count = seq
            self.bytes += moved

    def finish(self) -> None:
        self.sock.close()


class CRRClient(Worker):
    """Per transaction: connect, hello + request, response, close; timed from connect to close."""

    what = "connect/request/response"

    def __init__(self, host: str, port: int, index: int, params: RunParams, stop: threading.Event,
                 connect_timeout: float, corrupt_at: int | None = None, cpu: int | None = None):
        super().__init__(index, stop, cpu)
        self.address = (host, port)
        self.params = params
        self.connect_timeout = connect_timeout
        self.corrupt_at = corrupt_at

    def loop(self) -> None:
        p = self.params
        size, rsize, verify, stack = p.size, p.rsize, p.verify, p.stack
        hello = HELLO.pack(HELLO_MAGIC, self.index)
        req_maker = MessageMaker(self.index, size) if verify else None
        resp_maker = MessageMaker(self.index + RESPONSE_SEED, rsize) if verify else None
        plain = hello + _pattern(self.index, size)
        view = memoryview(bytearray(rsize))
        host, port = self.address
        stop, timeout = self.stop, self.connect_timeout
        append, clock = self.samples.append, time.perf_counter_ns
        moved = size + rsize
        seq = 0
        while not stop.is_set():
            msg = hello + _corrupted(req_maker.message(seq), self.corrupt_at, seq, size) if verify else plain
            t0 = clock()
            s = _connect(host, port, timeout, stack)
            try:
                s.settimeout(None)
                s.sendall(msg)
                if not _recv_exact(s, view, rsize):
                    raise IsoperfError("the server closed the connection before its response")
            finally:
                s.close()
            append(clock() - t0)
            if verify:
                problem = resp_maker.check(view, seq)
                if problem:
                    self.verify_error(f"connection {self.index} transaction {seq}: {problem}")
            seq += 1
            self.count = seq
            self.bytes += moved


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
        size, rsize, verify = p.size, p.rsize, p.verify
        makers: dict[int, tuple[MessageMaker, MessageMaker]] = {}
        plain: dict[int, bytes] = {}
        view = memoryview(bytearray(HELLO.size + size))
        stop, listener = self.stop, self.listener
        moved = size + rsize
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(CONTROL_TIMEOUT)
                _nodelay(sock)
                if not _recv_exact(sock, view, HELLO.size + size):
                    continue
                magic, conn = HELLO.unpack_from(view)
                if magic != HELLO_MAGIC or conn >= p.connections:
                    self.verify_error(f"a connection with a bad hello (magic {magic!r}, index {conn})")
                    continue
                if verify:
                    if conn not in makers:
                        makers[conn] = (MessageMaker(conn, size), MessageMaker(conn + RESPONSE_SEED, rsize))
                    req_maker, resp_maker = makers[conn]
                    req = view[HELLO.size :]
                    (seq,) = SEQ.unpack_from(req)
                    problem = req_maker.check(req, None)
                    if problem:
                        self.verify_error(f"connection {conn} transaction {seq}: {problem}")
                    corrupt = self.corrupt_at if conn == 0 else None
                    sock.sendall(_corrupted(resp_maker.message(seq), corrupt, seq, rsize))
                else:
                    if conn not in plain:
                        plain[conn] = _pattern(conn + RESPONSE_SEED, rsize)
                    sock.sendall(plain[conn])
            self.per_connection[conn] = self.per_connection.get(conn, 0) + 1
            self.count += 1
            self.bytes += moved


# ---------------------------------------------------------------- server


def _join_all(workers: list[Worker], timeout: float) -> None:
    """Join the workers within one deadline for all of them: one by one with the whole timeout each, 16 stuck
    connections (TCP in RTO back-off under TCG) would hold the control exchange for minutes and the peer's
    control timeout would end the session; a worker still alive after it is reported ("did not stop in time")."""
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))


def _accept_data(listener: socket.socket, params: RunParams, timeout: float) -> list[socket.socket]:
    """Accept the session's N data connections and order them by the index in their hello."""
    listener.settimeout(timeout)
    socks: dict[int, socket.socket] = {}
    while len(socks) < params.connections:
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            raise IsoperfError(
                f"only {len(socks)} of {params.connections} data connections arrived within {timeout:.0f}s"
            ) from None
        sock.settimeout(timeout)
        hello = b""
        while len(hello) < HELLO.size:
            chunk = sock.recv(HELLO.size - len(hello))
            if not chunk:
                break
            hello += chunk
        if len(hello) != HELLO.size:
            sock.close()
            continue
        magic, index = HELLO.unpack(hello)
        if magic != HELLO_MAGIC or index >= params.connections or index in socks:
            sock.close()
            continue
        sock.settimeout(None)
        socks[index] = sock
    return [socks[i] for i in range(params.connections)]


def _intervals(marks: list[tuple[float, int, dict[str, CpuTimes]]]) -> list[dict]:
    """Figures between consecutive marks: bytes, elapsed seconds, busy % per CPU."""
    return [
        {"bytes": b1 - b0, "elapsed": round(t1 - t0, 6), "cpu": cpu_busy_percent(c0, c1)}
        for (t0, b0, c0), (t1, b1, c1) in zip(marks, marks[1:], strict=False)
    ]


def serve_session(ctrl_sock: socket.socket, bind: str, _corrupt_byte: int | None = None) -> dict:
    """Run one test for the client on ctrl_sock; returns the result sent to it (for logging/tests).

    `_corrupt_byte` is a test hook: flip one bit at that offset of what the server sends on connection 0
    (maerts: the stream; rr/crr: the responses).
    """
    ctrl = Control(ctrl_sock)
    msg = ctrl.recv()
    try:
        if msg["type"] != "start":
            raise IsoperfError(f"expected 'start', got {msg['type']!r}")
        if msg.get("version") != PROTOCOL_VERSION:
            raise IsoperfError(f"protocol version {msg.get('version')!r} not supported (want {PROTOCOL_VERSION})")
        params = RunParams.from_message(msg)
    except IsoperfError as e:
        ctrl.send(type="error", message=str(e))
        raise

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    stop = threading.Event()
    workers: list[Worker] = []
    socks: list[socket.socket] = []
    try:
        listener.bind((bind, 0))
        listener.listen(max(128, params.connections + 4))
        ctrl.send(type="ready", data_port=listener.getsockname()[1])
        if params.test == "crr":
            listener.settimeout(0.2)
            workers = [CRRServer(listener, i, params, stop, _corrupt_byte) for i in range(params.connections)]
        else:
            try:
                socks = _accept_data(listener, params, CONTROL_TIMEOUT)
            except IsoperfError as e:
                ctrl.send(type="error", message=str(e))
                raise
            listener.close()
            for i, s in enumerate(socks):
                corrupt = _corrupt_byte if i == 0 else None
                if params.test == "stream":
                    workers.append(Receiver(s, i, params))
                elif params.test == "maerts":
                    workers.append(Sender(s, i, params, stop, corrupt))
                else:
                    _nodelay(s)
                    workers.append(RRServer(s, i, params, corrupt))
        for w in workers:
            w.start()
        ctrl.send(type="accepted")

        marks: list[tuple[float, int, dict[str, CpuTimes]]] = []
        phases: list[str] = []
        while True:
            msg = ctrl.recv(timeout=params.warmup + params.duration + CONTROL_TIMEOUT)
            if msg["type"] == "mark":
                marks.append((time.monotonic(), sum(w.progress()[0] for w in workers), read_proc_stat()))
                phases.append(str(msg.get("phase", "")))
            elif msg["type"] == "done":
                break
            else:
                raise IsoperfError(f"unexpected control message {msg['type']!r}")
        stop.set()  # maerts senders and crr acceptors stop; stream/rr connections end at the client's EOF
        _join_all(workers, CONTROL_TIMEOUT)
        if params.test == "maerts":
            for s in socks:
                s.close()  # FIN after the queued data: the client's receivers reach EOF
    finally:
        stop.set()
        listener.close()

    errors = [w.error for w in workers if w.error]
    if any(w.is_alive() for w in workers):
        errors.append("a data connection did not end in time")
    if len(marks) != params.repeats + 1 or phases[:1] != ["begin"] or phases[-1:] != ["end"]:
        errors.append(f"the client marked {phases} instead of begin, {params.repeats - 1} split(s), end")
        marks = marks[:1] * 2 if marks else [(0.0, 0, {})] * 2
    total = sum(w.bytes for w in workers)
    sent = msg.get("sent_bytes")
    if params.test == "stream" and sent is not None and sent != total:
        errors.append(f"received {total} bytes but the client sent {sent}")
    client_tx = msg.get("transactions")
    if params.test in TRANSACTION_TESTS and isinstance(client_tx, list):
        if params.test == "crr":
            served = [sum(w.per_connection.get(i, 0) for w in workers) for i in range(params.connections)]
        else:
            served = [w.count for w in workers]
        if served != client_tx:
            errors.append(f"served {served} transactions per connection but the client completed {client_tx}")
    verified = None
    if params.verify:
        for w in workers:
            errors.extend(w.errors)
        verified = not errors
    whole = _intervals([marks[0], marks[-1]])[0]
    result = {
        "type": "result",
        "bytes": whole["bytes"],
        "elapsed": whole["elapsed"],
        "cpu": whole["cpu"],
        "intervals": _intervals(marks),
        "total_bytes": total,
        "per_connection_bytes": [w.bytes for w in workers],
        "transactions": [w.count for w in workers] if params.test == "rr" else None,
        "verified": verified,
        "errors": errors,
    }
    ctrl.send(**result)
    return result


def run_server(bind: str = "0.0.0.0", port: int = DEFAULT_PORT, once: bool = False, ready=None,
               _corrupt_byte: int | None = None) -> int:
    """Serve sessions one after another; `ready` (a callable, for tests) gets the bound port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((bind, port))
    except OSError as e:
        raise IsoperfError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
    listener.listen(8)
    bound = listener.getsockname()[1]
    print(f"isoperf server listening on {bind}:{bound}", flush=True)
    if ready is not None:
        ready(bound)
    status = 0
    try:
        while True:
            sock, peer = listener.accept()
            try:
                result = serve_session(sock, bind, _corrupt_byte)
                print(
                    f"session from {peer[0]}: {result['bytes']} bytes in {result['elapsed']:.3f}s, "
                    f"errors={len(result['errors'])}",
                    flush=True,
                )
                status = 1 if result["errors"] else 0
            except (IsoperfError, OSError) as e:
                print(f"session from {peer[0]} failed: {e}", file=sys.stderr, flush=True)
                status = 1
            finally:
                sock.close()
            if once:
                return status
    finally:
        listener.close()


# ---------------------------------------------------------------- client


def _connect(host: str, port: int, timeout: float, stack: str = "legacy"):
    """A kernel socket ("legacy") or an IsoStack socket ("iso", same API) connected to host:port."""
    try:
        if stack == "iso":
            from isostack import frontend  # lazily: legacy runs stay stdlib-only

            sock = frontend.create_connection((host, port), timeout=timeout)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        if stack == "iso":
            raise IsoperfError(f"cannot open an IsoStack connection to {host}:{port}: {reason}") from None
        raise IsoperfError(f"cannot reach isoperf server at {host}:{port}: {reason}") from None
    return sock


def _nodelay(sock) -> None:
    """TCP_NODELAY on an rr/crr data socket (as sockperf does): a message over one MSS must not wait for an
    ACK of its first segments. Set on the server's sockets and the rr client's, outside the timed loop (the
    crr client's requests go out in one send on a new connection, and an extra control call per IsoStack
    connection would be timed)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_cpu(cpu: int) -> None:
    """IsoperfError unless this process may run on `cpu`."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu not in allowed:
        count = os.cpu_count() or 0
        if cpu >= count:
            raise IsoperfError(f"CPU {cpu} does not exist (this machine has CPUs 0-{count - 1})")
        raise IsoperfError(f"CPU {cpu} is not one this process may run on ({', '.join(map(str, allowed))})")


@dataclass
class _Mark:
    """The client's counters at one mark."""

    t: float
    bytes: int
    count: int
    lengths: list[int]
    cpu: dict[str, CpuTimes]


def _snapshot(workers: list[Worker]) -> _Mark:
    progress = [w.progress() for w in workers]
    return _Mark(
        t=time.monotonic(),
        bytes=sum(b for b, _ in progress),
        count=sum(c for _, c in progress),
        lengths=[len(w.samples) for w in workers],
        cpu=read_proc_stat(),
    )


def _figures(params: RunParams, workers: list[Worker], a: _Mark, b: _Mark, server: dict) -> dict:
    """The result figures of the measured interval between marks a and b (server: its view of it)."""
    if params.test == "stream":  # what the receiving side counted, on its own clock
        elapsed, nbytes = float(server["elapsed"]), int(server["bytes"])
    else:
        elapsed, nbytes = round(b.t - a.t, 6), b.bytes - a.bytes
    out = {
        "duration": elapsed,
        "bytes": nbytes,
        "throughput_bps": round(nbytes * 8 / elapsed, 1) if elapsed > 0 else 0.0,
        "cpu": {"client": cpu_busy_percent(a.cpu, b.cpu), "server": server.get("cpu", {})},
    }
    if params.test in TRANSACTION_TESTS:
        tx = b.count - a.count
        samples = array("q")
        for w, i0, i1 in zip(workers, a.lengths, b.lengths, strict=True):
            samples.extend(w.samples[i0:i1])
        out["messages"] = out["transactions"] = tx
        out["messages_per_s"] = out["transactions_per_s"] = round(tx / elapsed, 1) if elapsed > 0 else 0.0
        out["latency_us"] = latency_summary(samples)
    else:
        out["messages"] = nbytes // params.size
        out["messages_per_s"] = round(nbytes / params.size / elapsed, 1) if elapsed > 0 else 0.0
    return out


def run_client(
    host: str,
    port: int,
    params: RunParams,
    connect_timeout: float = 5.0,
    _corrupt_byte: int | None = None,
    cpu: int | None = None,
    send_loop: str = "auto",
    sndbuf: int | None = None,
) -> dict:
    """Run one test against an isoperf server and return the result dict.

    `cpu` pins the worker threads (one per connection) to that CPU. `send_loop` (auto|c|python) is the loop
    around the stream senders' sendall calls (see Sender). `sndbuf` sets SO_SNDBUF on the data sockets before
    any data (netperf's -s): it bounds the bytes a connection has in flight. `_corrupt_byte` is a test hook:
    flip one bit at that offset of what connection 0 sends (stream: the stream; rr/crr: the requests).
    """
    params.check()
    if cpu is not None:
        check_cpu(cpu)
    loop_kind = resolve_send_loop(send_loop) if params.test == "stream" and not params.verify else None
    ctrl = Control(_connect(host, port, connect_timeout))
    data_socks: list = []
    workers: list[Worker] = []
    stop = threading.Event()
    test = params.test
    iso_stats: dict | None = None
    end_errors: list[str] = []
    try:
        ctrl.send(type="start", version=PROTOCOL_VERSION, **asdict(params))
        try:
            ready = ctrl.expect("ready")
        except IsoperfError as e:
            if str(e).startswith("server:"):
                raise
            raise IsoperfError(f"no isoperf server at {host}:{port} ({e})") from None
        data_port = int(ready["data_port"])
        if test != "crr":
            for i in range(params.connections):
                s = _connect(host, data_port, connect_timeout, params.stack)
                s.settimeout(None)
                if sndbuf is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                if test == "rr":
                    _nodelay(s)
                s.sendall(HELLO.pack(HELLO_MAGIC, i))
                data_socks.append(s)
        ctrl.expect("accepted")

        for i in range(params.connections):
            corrupt = _corrupt_byte if i == 0 else None
            if test == "stream":
                workers.append(Sender(data_socks[i], i, params, stop, corrupt, cpu, loop_kind or "python"))
            elif test == "maerts":
                workers.append(Receiver(data_socks[i], i, params, cpu))
            elif test == "rr":
                workers.append(RRClient(data_socks[i], i, params, stop, corrupt, cpu))
            else:
                workers.append(CRRClient(host, data_port, i, params, stop, connect_timeout, corrupt, cpu))
        for w in workers:
            w.start()
        _sleep_watching(ctrl, params.warmup)
        ctrl.send(type="mark", phase="begin")
        marks = [_snapshot(workers)]
        for r in range(params.repeats):
            _sleep_watching(ctrl, params.duration)
            ctrl.send(type="mark", phase="end" if r == params.repeats - 1 else "split")
            marks.append(_snapshot(workers))
        stop.set()
        if test != "maerts":
            _join_all(workers, CONTROL_TIMEOUT)
            for i, s in enumerate(data_socks):
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError as e:  # the connection broke (reset): the session still ends with the figures
                    end_errors.append(f"connection {i}: shutdown failed: {e}")
        done = {"sent_bytes": sum(w.bytes for w in workers) if test == "stream" else None}
        if test in TRANSACTION_TESTS:
            done["transactions"] = [w.count for w in workers]
        ctrl.send(type="done", **done)
        server = ctrl.expect("result", timeout=CONTROL_TIMEOUT + params.duration)
        if test == "maerts":  # the server closed its side after the result's figures were taken
            _join_all(workers, CONTROL_TIMEOUT)
    finally:
        stop.set()
        for s in data_socks:
            s.close()
        ctrl.sock.close()
        if params.stack == "iso":
            iso_stats = _isostack_stats()
            _detach_isostack()

    errors = [w.error for w in workers if w.error]
    errors += [f"connection {w.index} did not stop in time" for w in workers if w.is_alive()]
    errors += end_errors
    errors += list(server.get("errors", []))
    client_total = sum(w.bytes for w in workers)
    server_total = server.get("total_bytes")
    if test != "stream" and server_total != client_total:  # stream: the server compares
        what = "received" if test == "maerts" else "moved"
        errors.append(f"the client {what} {client_total} bytes but the server {server_total}")
    verified = server.get("verified")
    if params.verify and test != "stream":
        client_errors = [e for w in workers for e in w.errors]
        errors += client_errors
        verified = not errors
    intervals = server.get("intervals") or []
    if len(intervals) != params.repeats:
        intervals = [{"elapsed": 0.0, "bytes": 0, "cpu": {}}] * params.repeats
        errors.append("the server reported no measured intervals")
    per_repeat = [_figures(params, workers, marks[i], marks[i + 1], intervals[i]) for i in range(params.repeats)]
    whole = _figures(params, workers, marks[0], marks[-1], server)
    result = {
        "test": test,
        "stack": params.stack,
        "size": params.size,
        "response_size": params.rsize if test in TRANSACTION_TESTS else None,
        "connections": params.connections,
        **whole,
        "requested_duration": params.duration,
        "warmup": params.warmup,
        "repeats": params.repeats,
        "cpu_binding": cpu,
        "send_loop": loop_kind,
        "sndbuf": sndbuf,
        "verified": verified,
        "errors": errors,
        "client_sent_bytes": marks[-1].bytes - marks[0].bytes,
        "client_total_bytes": client_total,
        "server_total_bytes": server_total,
        "intervals": per_repeat,
        "summary": _summary(per_repeat),
        "protocol_version": PROTOCOL_VERSION,
    }
    if params.stack == "iso" and iso_stats is not None:
        msgs = client_total // params.size if params.size else 0
        for k in ("send_posts", "kicks", "doorbells_rung"):
            iso_stats[f"{k}_per_msg"] = round(iso_stats[k] / msgs, 4) if msgs else None
        result["isostack"] = iso_stats
    return result


def _summary(per_repeat: list[dict]) -> dict:
    keys = ["throughput_bps", "messages_per_s"]
    out = {k: mean_stddev([r[k] for r in per_repeat]) for k in keys}
    if per_repeat and "latency_us" in per_repeat[0]:
        out["transactions_per_s"] = out["messages_per_s"]
        for p in ("p50", "p99"):
            out[f"latency_{p}_us"] = mean_stddev([r["latency_us"][p] for r in per_repeat])
    return out


def _isostack_stats() -> dict | None:
    """The front-end's counters over the whole run (SEND commands posted, kicks, doorbells), or None."""
    frontend = sys.modules.get("isostack.frontend")
    stack = getattr(frontend, "_default", None) if frontend is not None else None
    if stack is None:
        return None
    st = stack.stats()
    return {k: st[k] for k in ("send_posts", "kicks", "doorbells_rung", "doorbells_saved")}


def _detach_isostack() -> None:
    """Detach this process's default IsoStack attachment (isostackd then frees its memory at once)."""
    frontend = sys.modules.get("isostack.frontend")
    stack = getattr(frontend, "_default", None) if frontend is not None else None
    if stack is not None:
        stack.close()


def _sleep_watching(ctrl: Control, seconds: float) -> None:
    """Sleep, but fail fast if the server reports an error or drops the control connection."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([ctrl.sock], [], [], left)
        if readable:
            msg = ctrl.recv()
            if msg["type"] == "error":
                raise IsoperfError(f"server: {msg.get('message', 'unknown error')}")
            raise IsoperfError(f"unexpected {msg['type']!r} from the server during the test")


def format_human(r: dict) -> str:
    cpu_c = r["cpu"]["client"].get("all", 0.0)
    cpu_s = r["cpu"]["server"].get("all", 0.0)
    size = f"size={r['size']}"
    if r.get("response_size") not in (None, r["size"]):
        size += f"/{r['response_size']}"
    lines = [f"{r['test'].upper()} {size} conns={r['connections']} stack={r['stack']} repeats={r['repeats']}"]
    if "transactions" in r:
        lat = r["latency_us"]
        lines.append(
            f"  {r['transactions']} transactions in {r['duration']:.3f} s = {r['transactions_per_s']:.0f} trans/s, "
            f"{r['throughput_bps'] / 1e9:.3f} Gb/s"
        )
        if lat["samples"]:
            lines.append(
                "  latency us: " + "  ".join(f"{k} {lat[k]:.1f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            )
    else:
        lines.append(
            f"  {r['bytes']} bytes in {r['duration']:.3f} s = {r['throughput_bps'] / 1e9:.3f} Gb/s, "
            f"{r['messages_per_s']:.0f} msgs/s"
        )
    if r["repeats"] > 1:
        s = r["summary"]["throughput_bps"]
        lines.append(f"  per repeat: {s['mean'] / 1e9:.3f} +- {s['stddev'] / 1e9:.3f} Gb/s")
        if "transactions_per_s" in r["summary"]:
            t = r["summary"]["transactions_per_s"]
            lines.append(f"  per repeat: {t['mean']:.0f} +- {t['stddev']:.0f} trans/s")
    lines += [
        f"  cpu busy: client {cpu_c:.1f}%  server {cpu_s:.1f}%",
        f"  verified: {r['verified']}",
    ]
    lines += [f"  error: {e}" for e in r["errors"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """Bad options: one line on stderr and exit 2 (no usage block, no traceback)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="isoperf", description="netperf-style load generator for IsoStack")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server", help="answer isoperf clients")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"control port (default {DEFAULT_PORT})")
    s.add_argument("--once", action="store_true", help="exit after one session")
    c = sub.add_parser("client", help="run a test against an isoperf server")
    c.add_argument("--host", required=True, help="server address")
    c.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"control port (default {DEFAULT_PORT})")
    c.add_argument("--test", choices=TESTS, default="stream",
                   help="stream (send), maerts (receive), rr (request/response), crr (connect/request/response/"
                        "close); default stream")
    c.add_argument("--stack", choices=KNOWN_STACKS, default="legacy", help="network stack (default legacy)")
    c.add_argument("--size", type=_positive_int, default=1448,
                   help="message size in bytes; rr/crr: the request (default 1448)")
    c.add_argument("--response-size", type=_positive_int, default=None,
                   help="rr/crr: response size in bytes (default: --size)")
    c.add_argument("--duration", type=_positive_float, default=10.0, help="measured seconds (default 10)")
    c.add_argument("--warmup", type=_nonneg_float, default=1.0, help="seconds before measuring (default 1)")
    c.add_argument("--repeats", type=_positive_int, default=1,
                   help=f"measured intervals, back to back, each reported (default 1, at most {MAX_REPEATS})")
    c.add_argument("--connections", type=_positive_int, default=1, help="parallel connections (default 1)")
    c.add_argument("--cpu", type=_nonneg_int, default=None, help="pin the worker threads to this CPU")
    c.add_argument("--verify", action="store_true", help="check every byte (seq + pattern + crc32)")
    c.add_argument("--send-loop", choices=SEND_LOOPS, default="auto",
                   help="stream without --verify: the loop around the per-message sendall calls, in C as netperf's "
                        "(isostack's _sendloop extension) or in Python; auto: C where it is built (default). The "
                        "result says which ran (send_loop)")
    c.add_argument("--sndbuf", type=_positive_int, default=None,
                   help="SO_SNDBUF of the data sockets in bytes (netperf's -s; the kernel doubles it): bounds what a "
                        "connection has in flight (default: the kernel's autotuning)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--connect-timeout", type=_positive_float, default=5.0, help=argparse.SUPPRESS)
    return p


def _positive_int(text: str) -> int:
    v = _nonneg_int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def _port(text: str) -> int:
    v = _positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def _positive_float(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    v = _float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "server":
            return run_server(args.bind, args.port, args.once)
        params = RunParams(
            test=args.test,
            stack=args.stack,
            size=args.size,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            verify=args.verify,
            response_size=args.response_size,
            repeats=args.repeats,
        )
        try:  # option values that are wrong together: a usage error like any other bad option
            params.check()
            if args.cpu is not None:
                check_cpu(args.cpu)
            resolve_send_loop(args.send_loop)
        except IsoperfError as e:
            parser.exit(2, f"isoperf client: error: {e}\n")
        result = run_client(args.host, args.port, params, connect_timeout=args.connect_timeout, cpu=args.cpu,
                            send_loop=args.send_loop, sndbuf=args.sndbuf)
    except (IsoperfError, OSError) as e:  # OSError: a data or control connection broke mid-session
        print(f"isoperf: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("isoperf: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_human(result))
    if result["errors"]:
        if not args.json:
            print(f"isoperf: error: {len(result['errors'])} error(s), see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

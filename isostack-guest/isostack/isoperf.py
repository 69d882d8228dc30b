"""isoperf: a netperf-style load generator with a JSON-lines control connection.

Stdlib only with ``--stack legacy``: it runs inside the guests as ``python3 -m isostack.isoperf`` from an
uploaded copy. ``--stack iso`` imports ``isostack.frontend`` (lazily) and needs a running ``isostackd``
(its socket: ISOSTACK_SOCKET, default /run/isostack/isostackd.sock).

Usage::

    isoperf server [--bind ADDR] [--port 5701] [--once]
    isoperf client --host H [--port 5701] --test stream --size 1448 --duration 10 [--warmup 1]
                   [--connections 1] [--stack legacy] [--verify] [--json]

Control protocol (one JSON object per line on the control TCP connection, client -> server unless noted):

1. ``{"type": "start", "version": 1, "test": "stream", "stack": "legacy", "size": S, "connections": N,
   "duration": D, "warmup": W, "verify": bool}``
2. server -> ``{"type": "ready", "data_port": P}`` (a listener for this session only) or
   ``{"type": "error", "message": "..."}`` (unknown test/stack/version, bad values).
3. The client opens N data connections to P; each starts with an 8-byte hello (b"ISOP" + u32 index).
   server -> ``{"type": "accepted"}`` once all N are in.
4. The client is the timekeeper: it loads the connections, and after the warm-up sends
   ``{"type": "mark", "phase": "begin"}`` and after the duration ``{"type": "mark", "phase": "end"}``.
   Each side snapshots its counters and /proc/stat when it sends/receives a mark, so the server's figure
   is the bytes it *received* between the marks on its own clock (the honest number for STREAM).
5. The client stops, half-closes the data connections and sends ``{"type": "done", "sent_bytes": B}``.
6. server -> ``{"type": "result", "bytes": ..., "elapsed": ..., "cpu": {...}, "total_bytes": ...,
   "verified": bool|null, "errors": [...]}`` after every data connection reached EOF.

MAERTS/RR/CRR add a value for "test" and their own per-connection loops (refused today with a clear error).
"stack": "iso" routes the client's *data* connections through the IsoStack front-end
(``isostack.frontend.create_connection``); the control connection stays a kernel socket, and the server
serves kernel sockets whatever the stack (in STREAM, IsoStack is the sending side's stack).

Client output (``--json``): test, stack, size, connections, duration (the server's measured interval, s),
requested_duration, warmup, bytes (received by the server in that interval), messages (bytes // size),
throughput_bps, messages_per_s, cpu {"client": {"all": %, "cpu0": %, ...}, "server": {...}} (busy % from
/proc/stat over the interval), verified (null without --verify), errors (a non-empty list means exit 1),
client_sent_bytes, client_total_bytes, server_total_bytes (whole run incl. warm-up; they must be equal).

Payload verification (``--verify``): every message is ``seq (u64 BE) | pattern | crc32 (u32 BE)`` where the
pattern is derived from the connection index and seq; the server checks order, pattern and checksum of the
whole stream (warm-up included), so a single wrong byte fails the run.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass

PROTOCOL_VERSION = 1
DEFAULT_PORT = 5701
TESTS = ("stream",)  # later: "maerts", "rr", "crr"
STACKS = ("legacy", "iso")
KNOWN_STACKS = ("legacy", "iso")
HELLO_MAGIC = b"ISOP"
HELLO = struct.Struct("!4sI")
SEQ = struct.Struct("!Q")
CRC = struct.Struct("!I")
VERIFY_OVERHEAD = SEQ.size + CRC.size
MIN_VERIFY_SIZE = VERIFY_OVERHEAD + 1
MAX_SIZE = 1 << 20
RECV_CHUNK = 256 * 1024
CONTROL_TIMEOUT = 30.0
MAX_ERRORS = 10


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
        body_end = self.size - CRC.size
        got_seq = SEQ.unpack_from(msg)[0]
        (got_crc,) = CRC.unpack_from(msg, body_end)
        where = f"connection {self.conn_index} message {seq} (stream offset {seq * self.size})"
        if got_seq != seq:
            self.errors.append(f"{where}: sequence number {got_seq}, expected {seq}")
        elif msg[SEQ.size : body_end] != self.maker.expected_body(seq):
            self.errors.append(f"{where}: payload differs from the expected pattern")
        elif zlib.crc32(msg[:body_end]) != got_crc:
            self.errors.append(f"{where}: checksum mismatch")

    def finish(self) -> None:
        if self.pending and len(self.errors) < MAX_ERRORS:
            self.errors.append(
                f"connection {self.conn_index}: stream ended inside a message ({len(self.pending)} stray bytes)"
            )


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
        if self.verify and self.size < MIN_VERIFY_SIZE:
            raise IsoperfError(f"verification needs size >= {MIN_VERIFY_SIZE} (seq + crc32), got {self.size}")
        if not 1 <= self.connections <= 256:
            raise IsoperfError(f"connections must be between 1 and 256, got {self.connections}")
        if not self.duration > 0:
            raise IsoperfError(f"duration must be > 0, got {self.duration}")
        if not self.warmup >= 0:
            raise IsoperfError(f"warmup must be >= 0, got {self.warmup}")

    @classmethod
    def from_message(cls, msg: dict) -> RunParams:
        try:
            params = cls(
                test=str(msg["test"]),
                stack=str(msg.get("stack", "legacy")),
                size=int(msg["size"]),
                connections=int(msg["connections"]),
                duration=float(msg["duration"]),
                warmup=float(msg.get("warmup", 0)),
                verify=bool(msg.get("verify", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IsoperfError(f"bad start message: {e!r}") from None
        params.check()
        return params


# ---------------------------------------------------------------- server


class Receiver(threading.Thread):
    """Counts (and optionally verifies) what one data connection delivers, until EOF."""

    def __init__(self, sock: socket.socket, index: int, params: RunParams):
        super().__init__(daemon=True, name=f"isoperf-rx{index}")
        self.sock = sock
        self.index = index
        self.bytes = 0
        self.verifier = StreamVerifier(index, params.size) if params.verify else None
        self.error: str | None = None

    def run(self) -> None:
        buf = bytearray(RECV_CHUNK)
        view = memoryview(buf)
        try:
            while True:
                n = self.sock.recv_into(buf)
                if n == 0:
                    break
                self.bytes += n
                if self.verifier is not None:
                    self.verifier.feed(view[:n])
        except OSError as e:
            self.error = f"connection {self.index}: receive failed: {e}"
        finally:
            if self.verifier is not None:
                self.verifier.finish()
            self.sock.close()


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


def serve_session(ctrl_sock: socket.socket, bind: str) -> dict:
    """Run one test for the client on ctrl_sock; returns the result sent to it (for logging/tests)."""
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
    listener.bind((bind, 0))
    listener.listen(params.connections + 4)
    try:
        ctrl.send(type="ready", data_port=listener.getsockname()[1])
        try:
            socks = _accept_data(listener, params, CONTROL_TIMEOUT)
        except IsoperfError as e:
            ctrl.send(type="error", message=str(e))
            raise
    finally:
        listener.close()

    receivers = [Receiver(s, i, params) for i, s in enumerate(socks)]
    for r in receivers:
        r.start()
    ctrl.send(type="accepted")

    marks: dict[str, tuple[float, int, dict[str, CpuTimes]]] = {}
    while True:
        msg = ctrl.recv(timeout=params.warmup + params.duration + CONTROL_TIMEOUT)
        if msg["type"] == "mark":
            marks[msg.get("phase", "")] = (
                time.monotonic(),
                sum(r.bytes for r in receivers),
                read_proc_stat(),
            )
        elif msg["type"] == "done":
            break
        else:
            raise IsoperfError(f"unexpected control message {msg['type']!r}")
    for r in receivers:
        r.join(CONTROL_TIMEOUT)

    errors = [r.error for r in receivers if r.error]
    if any(r.is_alive() for r in receivers):
        errors.append("a data connection did not reach EOF in time")
    if "begin" not in marks or "end" not in marks:
        errors.append("the client did not mark the measured interval")
        marks.setdefault("begin", (0.0, 0, {}))
        marks.setdefault("end", marks["begin"])
    total = sum(r.bytes for r in receivers)
    sent = msg.get("sent_bytes")
    if sent is not None and sent != total:
        errors.append(f"received {total} bytes but the client sent {sent}")
    verified = None
    if params.verify:
        for r in receivers:
            errors.extend(r.verifier.errors)
        verified = not errors
    t0, b0, cpu0 = marks["begin"]
    t1, b1, cpu1 = marks["end"]
    result = {
        "type": "result",
        "bytes": b1 - b0,
        "elapsed": round(t1 - t0, 6),
        "total_bytes": total,
        "per_connection_bytes": [r.bytes for r in receivers],
        "cpu": cpu_busy_percent(cpu0, cpu1),
        "verified": verified,
        "errors": errors,
    }
    ctrl.send(**result)
    return result


def run_server(bind: str = "0.0.0.0", port: int = DEFAULT_PORT, once: bool = False, ready=None) -> int:
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
                result = serve_session(sock, bind)
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


class Sender(threading.Thread):
    """Sends size-byte messages, one send call each, until told to stop."""

    def __init__(
        self, sock: socket.socket, index: int, params: RunParams, stop: threading.Event, corrupt_at: int | None = None
    ):
        super().__init__(daemon=True, name=f"isoperf-tx{index}")
        self.sock = sock
        self.index = index
        self.params = params
        self.stop = stop
        self.corrupt_at = corrupt_at
        self.bytes = 0
        self.messages = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            if self.params.verify:
                self._run_verify()
            else:
                self._run_plain()
        except OSError as e:
            if not self.stop.is_set():
                self.error = f"connection {self.index}: send failed: {e}"

    def _run_plain(self) -> None:
        msg = _pattern(self.index, self.params.size)
        sendall, stop, size = self.sock.sendall, self.stop, self.params.size
        n = 0
        while not stop.is_set():
            sendall(msg)
            n += 1
            self.messages = n
            self.bytes = n * size

    def _run_verify(self) -> None:
        maker = MessageMaker(self.index, self.params.size)
        size = self.params.size
        seq = 0
        while not self.stop.is_set():
            msg = maker.message(seq)
            if self.corrupt_at is not None and seq * size <= self.corrupt_at < (seq + 1) * size:
                b = bytearray(msg)
                b[self.corrupt_at - seq * size] ^= 0x01
                msg = bytes(b)
            self.sock.sendall(msg)
            seq += 1
            self.messages = seq
            self.bytes = seq * size


def _connect(host: str, port: int, timeout: float, stack: str = "legacy") -> socket.socket:
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


def run_client(
    host: str, port: int, params: RunParams, connect_timeout: float = 5.0, _corrupt_byte: int | None = None
) -> dict:
    """Run one test against an isoperf server and return the result dict.

    `_corrupt_byte` is a test hook: flip one bit at that offset of connection 0's stream.
    """
    params.check()
    ctrl = Control(_connect(host, port, connect_timeout))
    data_socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        ctrl.send(type="start", version=PROTOCOL_VERSION, **params.__dict__)
        try:
            ready = ctrl.expect("ready")
        except IsoperfError as e:
            if str(e).startswith("server:"):
                raise
            raise IsoperfError(f"no isoperf server at {host}:{port} ({e})") from None
        for i in range(params.connections):
            s = _connect(host, int(ready["data_port"]), connect_timeout, params.stack)
            s.settimeout(None)
            s.sendall(HELLO.pack(HELLO_MAGIC, i))
            data_socks.append(s)
        ctrl.expect("accepted")

        senders = [Sender(s, i, params, stop, _corrupt_byte if i == 0 else None) for i, s in enumerate(data_socks)]
        for t in senders:
            t.start()
        _sleep_watching(ctrl, params.warmup)
        cpu0, sent0 = read_proc_stat(), sum(t.bytes for t in senders)
        ctrl.send(type="mark", phase="begin")
        _sleep_watching(ctrl, params.duration)
        ctrl.send(type="mark", phase="end")
        cpu1, sent1 = read_proc_stat(), sum(t.bytes for t in senders)
        stop.set()
        for t in senders:
            t.join()
        for s in data_socks:
            s.shutdown(socket.SHUT_WR)
        sent_total = sum(t.bytes for t in senders)
        ctrl.send(type="done", sent_bytes=sent_total)
        server = ctrl.expect("result", timeout=CONTROL_TIMEOUT + params.duration)
    finally:
        stop.set()
        for s in data_socks:
            s.close()
        ctrl.sock.close()
        if params.stack == "iso":
            _detach_isostack()

    errors = [t.error for t in senders if t.error] + list(server.get("errors", []))
    elapsed = float(server["elapsed"])
    nbytes = int(server["bytes"])
    return {
        "test": params.test,
        "stack": params.stack,
        "size": params.size,
        "connections": params.connections,
        "duration": elapsed,
        "requested_duration": params.duration,
        "warmup": params.warmup,
        "bytes": nbytes,
        "messages": nbytes // params.size,
        "throughput_bps": round(nbytes * 8 / elapsed, 1) if elapsed > 0 else 0.0,
        "messages_per_s": round(nbytes / params.size / elapsed, 1) if elapsed > 0 else 0.0,
        "cpu": {"client": cpu_busy_percent(cpu0, cpu1), "server": server.get("cpu", {})},
        "verified": server.get("verified"),
        "errors": errors,
        "client_sent_bytes": sent1 - sent0,
        "client_total_bytes": sent_total,
        "server_total_bytes": server.get("total_bytes"),
        "protocol_version": PROTOCOL_VERSION,
    }


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
    lines = [
        f"{r['test'].upper()} size={r['size']} conns={r['connections']} stack={r['stack']}",
        f"  {r['bytes']} bytes in {r['duration']:.3f} s = {r['throughput_bps'] / 1e9:.3f} Gb/s, "
        f"{r['messages_per_s']:.0f} msgs/s",
        f"  cpu busy: client {cpu_c:.1f}%  server {cpu_s:.1f}%",
        f"  verified: {r['verified']}",
    ]
    lines += [f"  error: {e}" for e in r["errors"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isoperf", description="netperf-style load generator for IsoStack")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server", help="answer isoperf clients")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"control port (default {DEFAULT_PORT})")
    s.add_argument("--once", action="store_true", help="exit after one session")
    c = sub.add_parser("client", help="run a test against an isoperf server")
    c.add_argument("--host", required=True, help="server address")
    c.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"control port (default {DEFAULT_PORT})")
    c.add_argument("--test", choices=TESTS, default="stream", help="test to run (default stream)")
    c.add_argument("--stack", choices=KNOWN_STACKS, default="legacy", help="network stack (default legacy)")
    c.add_argument("--size", type=_positive_int, default=1448, help="message size in bytes (default 1448)")
    c.add_argument("--duration", type=_positive_float, default=10.0, help="measured seconds (default 10)")
    c.add_argument("--warmup", type=_nonneg_float, default=1.0, help="seconds before measuring (default 1)")
    c.add_argument("--connections", type=_positive_int, default=1, help="parallel connections (default 1)")
    c.add_argument("--verify", action="store_true", help="check every byte (seq + pattern + crc32)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--connect-timeout", type=_positive_float, default=5.0, help=argparse.SUPPRESS)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
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
    args = build_parser().parse_args(argv)
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
        )
        result = run_client(args.host, args.port, params, connect_timeout=args.connect_timeout)
    except IsoperfError as e:
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

"""The control wire protocol: JSON lines on one TCP connection, and the test parameters it carries.

One JSON object per line on the control TCP connection, client -> server unless noted:

1. ``{"type": "start", "version": 3, "test": T, "stack": S, "size": N, "response_size": R, "connections": C,
   "duration": D, "warmup": W, "intervals": K, "verify": bool}``
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
7. A session that fails on the server after "ready" ends with ``{"type": "error", "message": "..."}`` before the
   server closes the control connection, so the client reports why (not a broken pipe).

The control connection may take another path than the data (``isoperf client --control-host``, ``isoperf
server --data-bind``): a management network, so that loss and back-off on the link under test cannot starve it.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

from .errors import IsoperfError
from .verify import MIN_VERIFY_SIZE

PROTOCOL_VERSION = 3  # 3: the start message says "intervals" (was "repeats")
DEFAULT_PORT = 5701
TESTS = ("stream", "maerts", "rr", "crr")
TRANSACTION_TESTS = ("rr", "crr")
STACKS = ("legacy", "iso")
KNOWN_STACKS = ("legacy", "iso")
HELLO_MAGIC = b"ISOP"
HELLO = struct.Struct("!4sI")
MAX_SIZE = 1 << 20
MAX_INTERVALS = 100
CONTROL_TIMEOUT = 30.0


class Control:
    """JSON lines over a TCP socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def send(self, **msg) -> None:
        """Send one message; a connection the peer closed becomes an IsoperfError with the peer's last words
        (an error message it sent before closing), not a bare "[Errno 32] Broken pipe"."""
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            reason = f"the control connection broke while sending {msg.get('type')!r} ({e.strerror or e})"
            said = self.last_words()
            raise IsoperfError(f"{reason}; the peer said: {said}" if said else reason) from None

    def last_words(self, timeout: float = 1.0) -> str | None:
        """The message of an error the peer sent before it closed the connection (None: there is none)."""
        try:
            while True:
                msg = self.recv(timeout)
                if msg["type"] == "error":
                    return str(msg.get("message", "unknown error"))
        except (IsoperfError, OSError):
            return None

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


@dataclass(frozen=True)
class RunParams:
    """A test's parameters: the client's options and the start message's fields (the same names)."""

    test: str = "stream"
    stack: str = "legacy"
    size: int = 1448
    connections: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    verify: bool = False
    response_size: int | None = None  # rr/crr; None: the same as size
    intervals: int = 1  # measured intervals, back to back (a playbook's `repeats` are whole runs)

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
        if not 1 <= self.intervals <= MAX_INTERVALS:
            raise IsoperfError(f"intervals must be between 1 and {MAX_INTERVALS}, got {self.intervals}")

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
                intervals=int(msg.get("intervals", 1)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IsoperfError(f"bad start message: {e!r}") from None
        params.check()
        return params

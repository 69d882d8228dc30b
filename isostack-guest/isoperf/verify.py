"""Payload verification (``--verify``): messages that a receiver can check byte by byte.

Every message is ``seq (u64 BE) | pattern | crc32 (u32 BE)`` where the pattern is derived from the
connection index and seq (responses use a pattern of their own, so an echo does not pass); the receiving side
checks order, pattern and checksum of everything (warm-up included), so a single wrong byte fails the run.
rr/crr: the server checks requests, the client checks responses and that each response carries its request's
sequence number.
"""

from __future__ import annotations

import struct
import zlib

SEQ = struct.Struct("!Q")
CRC = struct.Struct("!I")
VERIFY_OVERHEAD = SEQ.size + CRC.size
MIN_VERIFY_SIZE = VERIFY_OVERHEAD + 1
MAX_ERRORS = 10
RESPONSE_SEED = 1000  # responses' pattern: that of connection index + this (131 * 1000 % 256 != 0: never the
# request pattern of the same connection)


def pattern(conn_index: int, length: int) -> bytes:
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
        self.pattern = pattern(conn_index, self.body + 256)

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


def corrupted(msg: bytes, offset: int | None, seq: int, size: int) -> bytes:
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

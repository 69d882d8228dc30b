"""Fuzz input as a stream of numbers and byte strings: what one_input() reads its choices from.

Past the end every read gives zeros / b"", so any input, however short, is a valid run.
"""

from __future__ import annotations


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def pick(self, choices):
        return choices[self.u8() % len(choices)]

    def rest(self) -> bytes:
        return self.take(len(self.data))

    def remaining(self) -> int:
        return len(self.data) - self.pos

"""One socket's byte ring in the shared memory, and the one wrap-around copy both directions use.

The tx path copies into its ring and the rx path out of its ring; a copy that crosses the ring's end is two
pieces.  Keeping that split in one place (RingBuffer.pieces) means the wrap is written and tested once."""

from __future__ import annotations

from ..layout import ring_spans


class RingBuffer:
    """`size` bytes (a power of two) at `offset` in `memory`, addressed by free-running positions."""

    __slots__ = ("memory", "offset", "size")

    def __init__(self, memory: memoryview, offset: int, size: int) -> None:
        self.memory = memory
        self.offset = offset
        self.size = size

    def pieces(self, position: int, length: int) -> list[memoryview]:
        """The one or two slices of the ring that hold `length` bytes from free-running `position`."""
        memory, base = self.memory, self.offset
        return [memory[base + off : base + off + n] for off, n in ring_spans(position, length, self.size)]

    def write(self, position: int, data) -> None:
        """Copy `data` (bytes-like, len(data) <= size) into the ring at `position` (the tx direction)."""
        pieces = self.pieces(position, len(data))
        if len(pieces) == 1:
            pieces[0][:] = data
            return
        source = memoryview(data).cast("B")
        at = 0
        for piece in pieces:
            piece[:] = source[at : at + len(piece)]
            at += len(piece)

    def read_into(self, position: int, destination: memoryview) -> None:
        """Fill `destination` (a writable byte view) from the ring at `position` (the rx direction)."""
        at = 0
        for piece in self.pieces(position, len(destination)):
            destination[at : at + len(piece)] = piece
            at += len(piece)

    def read(self, position: int, length: int) -> bytes:
        """`length` bytes from the ring at `position` as one bytes object (one copy when they do not wrap)."""
        pieces = self.pieces(position, length)
        if len(pieces) == 1:
            return bytes(pieces[0])
        return b"".join(pieces)

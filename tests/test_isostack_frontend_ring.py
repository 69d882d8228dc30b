"""isostack/frontend/ring.py: the one wrap-around copy both data paths use, on plain memory (no dispatcher)."""

import os

import pytest

from isostack.frontend.ring import RingBuffer

SIZE = 64
OFFSET = 16  # the ring sits inside a larger region, as in the shared memory


def ring():
    memory = memoryview(bytearray(OFFSET + SIZE + 16))
    return memory, RingBuffer(memory, OFFSET, SIZE)


@pytest.mark.parametrize("position", [0, 10, 63, 64, 100, (1 << 64) - 5])
@pytest.mark.parametrize("length", [0, 1, 30, 64])
def test_write_then_read_back_at_any_position(position, length):
    memory, r = ring()
    data = os.urandom(length)
    r.write(position, data)
    assert r.read(position, length) == data
    into = bytearray(length)
    r.read_into(position, memoryview(into))
    assert bytes(into) == data
    assert bytes(memory[:OFFSET]) == bytes(OFFSET) and bytes(memory[OFFSET + SIZE :]) == bytes(16)  # stays inside


def test_a_copy_across_the_end_wraps_to_the_start():
    memory, r = ring()
    r.write(SIZE - 3, b"abcdefg")
    assert bytes(memory[OFFSET + SIZE - 3 : OFFSET + SIZE]) == b"abc"
    assert bytes(memory[OFFSET : OFFSET + 4]) == b"defg"
    assert [len(p) for p in r.pieces(SIZE - 3, 7)] == [3, 4]
    assert [len(p) for p in r.pieces(2 * SIZE + 1, 7)] == [7]  # positions run free: only the offset counts


def test_write_takes_any_bytes_like():
    _memory, r = ring()
    r.write(60, memoryview(b"0123456789")[2:8])
    r.write(0, bytearray(b"x"))  # overwrites the wrapped part's first byte
    assert r.read(60, 6) == b"2345" + b"x7"

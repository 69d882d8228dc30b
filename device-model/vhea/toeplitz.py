"""The Toeplitz hash of receive-side scaling (RSS), sans I/O and stdlib-only.

Definition (Microsoft, "RSS hashing functions"; virtio-net 1.2 §5.1.6.4.3.1): for a secret key K of at least
len(input) + 4 bytes, the 32-bit hash is the XOR, over every set bit i of the input (bit 0 = most significant
bit of byte 0), of the 32 key bits K[i .. i+31]. The input is the source address, the destination address,
then for TCP/UDP the source port and the destination port, all in network byte order:

    IPv4        12 bytes with ports,  8 without
    IPv6        36 bytes with ports, 32 without

`hash_reference` is the definition, bit by bit. `Toeplitz` is the per-frame version: for each input byte
position it precomputes a 256-entry table (the XOR of the key windows of that byte's set bits), so a hash is
one table lookup and one XOR per input byte. Both agree for every key and input (property test).

No imports beyond the standard library: the guest side (isostack/rss.py) carries the same few lines.
"""

from __future__ import annotations

import ipaddress

#: The key of the published test vectors (Microsoft), also the default key of every vhea port.
DEFAULT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
#: virtio-net's rss_max_key_size is 40; so is the HEA's and most NICs'.
KEY_LEN = 40
#: The longest input: IPv6 source + destination + two ports.
MAX_INPUT = 36


def hash_reference(key: bytes, data: bytes) -> int:
    """The Toeplitz hash by its definition, one input bit at a time (slow; the oracle for tests)."""
    if len(key) < len(data) + 4:
        raise ValueError(f"a {len(data)}-byte input needs a key of at least {len(data) + 4} bytes")
    k = int.from_bytes(key, "big")
    kbits = len(key) * 8
    result = 0
    for i in range(len(data) * 8):
        if data[i // 8] & (0x80 >> (i % 8)):
            result ^= (k >> (kbits - 32 - i)) & 0xFFFFFFFF
    return result


def _tables(key: bytes, max_input: int) -> list[list[int]]:
    k = int.from_bytes(key, "big")
    kbits = len(key) * 8
    tables = []
    for pos in range(max_input):
        # window[b] = the 32 key bits that input bit b of this byte selects (b = 0 is the byte's MSB)
        window = [(k >> (kbits - 32 - (pos * 8 + b))) & 0xFFFFFFFF for b in range(8)]
        t = [0] * 256
        for v in range(1, 256):
            low = v & -v  # lowest set bit of v
            t[v] = t[v ^ low] ^ window[7 - (low.bit_length() - 1)]
        tables.append(t)
    return tables


class Toeplitz:
    """The hash for one key, with per-byte tables (36 x 256 ints, ~10k entries, built in a few ms)."""

    __slots__ = ("key", "tables")

    def __init__(self, key: bytes = DEFAULT_KEY, max_input: int = MAX_INPUT) -> None:
        key = bytes(key)
        if len(key) < max_input + 4:
            raise ValueError(f"the key must be at least {max_input + 4} bytes, not {len(key)}")
        self.key = key
        self.tables = _tables(key, max_input)

    def hash(self, data: bytes) -> int:
        h = 0
        for t, b in zip(self.tables, data, strict=False):  # inputs are at most max_input bytes
            h ^= t[b]
        return h


def tuple_input(src: str, dst: str, sport: int | None = None, dport: int | None = None) -> bytes:
    """The hash input for textual addresses (both IPv4 or both IPv6) and optional ports."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"{src} and {dst} are not of the same IP version")
    data = s.packed + d.packed
    if sport is not None or dport is not None:
        if sport is None or dport is None:
            raise ValueError("give both ports or neither")
        data += sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return data


def hash_tuple(src: str, dst: str, sport: int | None = None, dport: int | None = None,
               key: bytes = DEFAULT_KEY) -> int:
    """Convenience: the hash of a textual tuple (builds tables; for repeated use keep a Toeplitz)."""
    return Toeplitz(key).hash(tuple_input(src, dst, sport, dport))

"""The frames the benches send: plain frames of a given size and a 64 KiB TCP frame as a guest hands it over
with TSO. Shared by the in-process microbench and the Python front-end cases of `vhea bench` (and the tests),
so that both measure the same bytes."""

from __future__ import annotations

import struct

from .offload import VHDR, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, csum_finish, csum_sum

TSO_PAYLOAD = 65535 - 20 - 32  # a 64 KiB IP datagram: IPv4 20 + TCP 32 (timestamps) + payload
TSO_MSS = 1448
#: the virtio-net header of tso_test_frame(): needs checksum (start 34, offset 16), GSO TCPv4, hdr_len 66
TSO_VHDR = VHDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, TSO_MSS, 34, 16) + b"\0\0"


def tso_test_frame(payload_len: int = TSO_PAYLOAD) -> bytes:
    """An IPv4/TCP frame as a guest hands it over with TSO (checksum field = pseudo-header sum)."""
    src, dst = bytes([10, 10, 0, 1]), bytes([10, 10, 0, 2])
    tcp_len = 32 + payload_len
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x18, 65535, 0, 0)
                   + b"\x01\x01\x08\x0a" + bytes(8))
    struct.pack_into("!H", th, 16, csum_sum(src + dst + struct.pack("!xBH", 6, tcp_len)) or 0xFFFF)
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 1, 0x4000, 64, 6, 0) + src + dst)
    struct.pack_into("!H", ip, 10, csum_finish(csum_sum(bytes(ip))))
    eth = bytes.fromhex("02000000000b02000000000a0800")
    return eth + bytes(ip) + bytes(th) + bytes(i & 0xFF for i in range(payload_len))


def plain_frame(size: int) -> bytes:
    """A `size`-byte frame from 02:..:0a to 02:..:0b (ethertype 0x88b5, local experimental), zeros after."""
    return bytes.fromhex("02000000000b02000000000a88b5") + bytes(size - 14)

"""virtio-net headers and offloads (vhea/offload.py) and how a port passes them on (vhea/net.py).

Contract: for any virtio_net_hdr and frame, validate() and parse() raise OffloadError and nothing else;
a frame that validate() let through is segmented (segment_tcp) or checksummed (complete_csum) without an
exception, into segments no bigger than the limits, whose payloads put together are the frame's, and whose
IPv4 header and TCP checksums verify (or hold the pseudo-header sum, partial); VirtioNet.takes_gso decides
for every header.

Input: the 4-byte feature mask of the sending guest, 2 bytes of the receiving port's, the 10 offload bytes of
the virtio_net_hdr, then the frame.
"""

from __future__ import annotations

import struct

from vhea.net import VirtioNet
from vhea.offload import (
    IPPROTO_TCP,
    MAX_SEGMENT_FRAME,
    MAX_SEGMENTS,
    VHDR,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    OffloadError,
    OffloadRequest,
    TxFrame,
    complete_csum,
    csum_sum,
    parse,
    segment_tcp,
    validate,
    verify_ipv4_header,
)

from .reader import Reader

TARGETS = ("vhea.offload",)


def _tcp_sum_ok(seg: bytes, h, partial: bool) -> bool:
    """The segment's TCP checksum: complete (sums to zero with the pseudo-header) or the pseudo-header sum."""
    tcp = seg[h.l4:]
    if h.ipv6:
        pseudo = csum_sum(seg[h.l3 + 8:h.l3 + 40])
    else:
        pseudo = csum_sum(seg[h.l3 + 12:h.l3 + 20])
    pseudo += IPPROTO_TCP + len(tcp)
    if partial:
        return struct.unpack_from("!H", seg, h.l4 + 16)[0] == pseudo % 0xFFFF
    return (pseudo + csum_sum(tcp)) % 0xFFFF == 0


def one_input(data: bytes) -> None:
    r = Reader(data)
    features = r.u32()
    receiver = VirtioNet(1)
    receiver.set_features(r.u16() << 1)  # GUEST_CSUM (bit 1) .. HOST_UFO (bit 14): the offload bits
    hdr = r.take(10).ljust(10, b"\0")
    frame = TxFrame(r.rest())
    frame.vhdr = OffloadRequest.unpack_from(hdr)
    try:
        h = parse(frame)
    except OffloadError:
        h = None
    else:
        assert 14 <= h.l3 < h.l4 <= h.l4_end <= len(frame)
    try:
        validate(frame, features)
    except OffloadError as e:
        assert e.reason.startswith("tx_")
        return
    flags, gso_type, _hl, gso_size, csum_start, csum_offset = frame.vhdr
    assert VHDR.unpack(VHDR.pack(*frame.vhdr)) == tuple(frame.vhdr)
    if gso_type:
        receiver.takes_gso(gso_type)
        assert h is not None
        for partial in (False, True):
            segments = segment_tcp(frame, partial)
            assert 1 <= len(segments) <= MAX_SEGMENTS
            if len(segments) > 1:
                assert all(len(s) <= MAX_SEGMENT_FRAME for s in segments)
            assert b"".join(s[h.l4_end:] for s in segments) == frame[h.l4_end:]
            for s in segments:
                assert s[:h.l4_end][:h.l3] == frame[:h.l3]
                if not h.ipv6:
                    assert verify_ipv4_header(s, h.l3)
                assert _tcp_sum_ok(s, h, partial)
    elif flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        done = complete_csum(frame, csum_start, csum_offset)
        assert len(done) == len(frame) and done[:csum_start] == frame[:csum_start]

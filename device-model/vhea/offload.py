"""virtio-net offloads in the device: the virtio_net_hdr's checksum and GSO fields, TCP segmentation and
checksum completion for a peer that did not negotiate them.

A guest with HOST_TSO4/6 and CSUM hands over up to 64 KiB TCP frames ("GSO frames") and frames whose
TCP/UDP checksum is only partial (NEEDS_CSUM: the field holds the pseudo-header sum; the device sums from
csum_start to the end and stores the complement at csum_start + csum_offset). What the device does with
them depends on the *receiving* port's features:

- GSO frame, peer has GUEST_TSO4/6 (+ GUEST_ECN if the ECN bit is set): pass it whole, header copied.
- GSO frame, peer without: segment into gso_size-payload TCP segments with per-segment IPv4 total length,
  ID and header checksum (IPv6 payload length), TCP sequence number, FIN/PSH only on the last segment, CWR
  only on the first; then per-segment TCP checksums (complete, or partial + NEEDS_CSUM if the peer has
  GUEST_CSUM, which saves the work on both sides).
- NEEDS_CSUM frame, peer has GUEST_CSUM: pass the header on; else complete the checksum here.

Everything the guest wrote is untrusted: `validate()` checks a frame's header at ingress and raises
OffloadError with a drop reason (the frame is counted as dropped, never an exception out of the loop).

Checksums: the one's complement sum of 16-bit words is computed modulo 0xFFFF (2**16 = 1 mod 0xFFFF, so the
sum of the words equals the whole buffer read as one big integer, mod 0xFFFF). With numpy, a uint16 view
summed in C (all segments of a GSO frame in one call); without it, `int.from_bytes`, much slower for big
buffers (numpy is optional).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

try:  # optional: much faster checksums over big buffers
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

# feature bits (virtio spec 5.1.3)
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14

OFFLOAD_FEATURES = sum(1 << b for b in (
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN))

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
#: at most this many segments from one GSO frame (Linux's smallest MSS gives ~750 for 64 KiB)
MAX_SEGMENTS = 1024
#: biggest segment a GSO frame may ask for (a jumbo frame): more is a guest bug, not a frame a peer can take
MAX_SEGMENT_FRAME = 9216

#: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (the 10 bytes before num_buffers)
VHDR = struct.Struct("<BBHHHH")
_H = struct.Struct("!H")
_I = struct.Struct("!I")


class OffloadRequest(NamedTuple):
    """The offload fields of a virtio_net_hdr as the guest wrote them (the 10 bytes before num_buffers)."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> OffloadRequest:
        return cls._make(VHDR.unpack_from(buffer, offset))


class OffloadError(Exception):
    """A frame whose offload request cannot be honoured; `reason` is the drop counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class TxFrame(bytes):
    """A frame from a guest that carries offload requests: its virtio_net_hdr fields ride along.

    Plain frames stay plain `bytes` (the fast path); only frames with NEEDS_CSUM or a GSO type become
    TxFrame, so the switch and classifier see bytes either way.
    """

    vhdr: OffloadRequest
    l4: int  # offset of the TCP header (GSO frames, after validate)
    l4_end: int  # end of the TCP header (GSO frames)


# ---- checksums -----------------------------------------------------------------------------------------------

def csum_sum(data) -> int:
    """One's complement sum of `data` as big-endian 16-bit words (odd tail padded), reduced mod 0xFFFF."""
    n = len(data)
    if _np is not None and n >= 256:
        a = _np.frombuffer(data, dtype="<u2", count=n >> 1)
        s = int(a.sum(dtype=_np.uint64)) * 256  # little-endian words: x*256 = byte swap, mod 0xFFFF
        if n & 1:
            s += data[n - 1] << 8
        return s % 0xFFFF
    v = int.from_bytes(data, "big")
    if n & 1:
        v <<= 8
    return v % 0xFFFF


def csum_finish(s: int) -> int:
    """The checksum field for a sum: its one's complement (never 0: 0xFFFF stands for a zero sum)."""
    return 0xFFFF - (s % 0xFFFF)


def csum_segments(payload, mss: int, count: int) -> list[int]:
    """Sums of `count` consecutive mss-byte pieces of `payload` (the last may be shorter)."""
    if _np is not None and mss % 2 == 0 and count > 1:
        full = len(payload) // mss
        a = _np.frombuffer(payload, dtype="<u2", count=full * mss // 2).reshape(full, mss // 2)
        sums = [(int(x) * 256) % 0xFFFF for x in a.sum(axis=1, dtype=_np.uint64).tolist()]
        if full < count:
            sums.append(csum_sum(payload[full * mss:]))
        return sums
    return [csum_sum(payload[i * mss:(i + 1) * mss]) for i in range(count)]


def verify_ipv4_header(frame, l3: int) -> bool:
    ihl = (frame[l3] & 0xF) * 4
    return csum_sum(frame[l3:l3 + ihl]) == 0


# ---- parsing -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Headers:
    l3: int  # offset of the IP header
    ipv6: bool
    l4: int  # offset of the L4 header
    proto: int
    l4_end: int  # end of the TCP header (== l4 for non-TCP)


def parse(frame) -> Headers:
    """Ethernet (up to two VLAN tags) / IPv4 or IPv6 (no extension headers) / TCP; raises OffloadError."""
    n = len(frame)
    off = 12
    if n < 14:
        raise OffloadError("tx_offload_truncated", "no ethernet header")
    etype = _H.unpack_from(frame, off)[0]
    for _ in range(2):
        if etype not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        off += 4
        if n < off + 2:
            raise OffloadError("tx_offload_truncated", "VLAN tag")
        etype = _H.unpack_from(frame, off)[0]
    l3 = off + 2
    if etype == ETH_P_IP:
        if n < l3 + 20 or frame[l3] >> 4 != 4:
            raise OffloadError("tx_offload_truncated", "IPv4 header")
        ihl = (frame[l3] & 0xF) * 4
        if ihl < 20 or n < l3 + ihl:
            raise OffloadError("tx_offload_bad_ip", f"IPv4 header length {ihl}")
        if _H.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
            raise OffloadError("tx_offload_bad_ip", "IPv4 fragment")
        proto = frame[l3 + 9]
        l4 = l3 + ihl
        ipv6 = False
    elif etype == ETH_P_IPV6:
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            raise OffloadError("tx_offload_truncated", "IPv6 header")
        proto = frame[l3 + 6]
        l4 = l3 + 40
        ipv6 = True
    else:
        raise OffloadError("tx_offload_not_ip", f"ethertype {etype:#06x}")
    l4_end = l4
    if proto == IPPROTO_TCP:
        if n < l4 + 20:
            raise OffloadError("tx_offload_truncated", "TCP header")
        thl = (frame[l4 + 12] >> 4) * 4
        if thl < 20 or n < l4 + thl:
            raise OffloadError("tx_offload_truncated", f"TCP header length {thl}")
        l4_end = l4 + thl
    return Headers(l3, ipv6, l4, proto, l4_end)


def validate(frame: TxFrame, features: int) -> None:
    """Check the offload request of a frame from a guest with `features`; raises OffloadError."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = frame.vhdr
    n = len(frame)
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        if not features & (1 << VIRTIO_NET_F_CSUM):
            raise OffloadError("tx_csum_not_negotiated")
        if csum_start + csum_offset + 2 > n or csum_offset > 0xFFFF - 2:
            raise OffloadError("tx_csum_bad_offset", f"start {csum_start} offset {csum_offset} frame {n}")
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        if gso_type & VIRTIO_NET_HDR_GSO_ECN:
            raise OffloadError("tx_gso_bad_type", "ECN bit without a GSO type")
        return
    if gso == VIRTIO_NET_HDR_GSO_TCPV4:
        need = VIRTIO_NET_F_HOST_TSO4
    elif gso == VIRTIO_NET_HDR_GSO_TCPV6:
        need = VIRTIO_NET_F_HOST_TSO6
    else:
        raise OffloadError("tx_gso_bad_type", f"gso_type {gso_type:#x}")
    if not features & (1 << need):
        raise OffloadError("tx_gso_not_negotiated", f"gso_type {gso_type:#x}")
    if gso_type & VIRTIO_NET_HDR_GSO_ECN and not features & (1 << VIRTIO_NET_F_HOST_ECN):
        raise OffloadError("tx_gso_not_negotiated", "ECN")
    if gso_size == 0:
        raise OffloadError("tx_gso_bad_size", "gso_size 0")
    h = parse(frame)
    if h.proto != IPPROTO_TCP or h.ipv6 != (gso == VIRTIO_NET_HDR_GSO_TCPV6):
        raise OffloadError("tx_gso_bad_type", f"gso_type {gso_type:#x} on protocol {h.proto}")
    payload = n - h.l4_end
    if payload > gso_size and h.l4_end + gso_size > MAX_SEGMENT_FRAME:
        raise OffloadError("tx_gso_bad_size", f"gso_size {gso_size} makes segments over {MAX_SEGMENT_FRAME} bytes")
    if -(-payload // gso_size) > MAX_SEGMENTS:
        raise OffloadError("tx_gso_bad_size", f"gso_size {gso_size} makes over {MAX_SEGMENTS} segments")
    frame.l4 = h.l4
    frame.l4_end = h.l4_end


# ---- work for a receiving port -------------------------------------------------------------------------------

def complete_csum(frame, csum_start: int, csum_offset: int) -> bytes:
    """The frame with its partial checksum completed (field preset with the pseudo-header sum)."""
    buf = bytearray(frame)
    at = csum_start + csum_offset
    _H.pack_into(buf, at, csum_finish(csum_sum(memoryview(buf)[csum_start:])))
    return bytes(buf)


def segment_tcp(frame: TxFrame, partial: bool) -> list[bytes]:
    """Cut a validated TCP GSO frame into gso_size segments with correct IP and TCP headers.

    partial=False: complete TCP checksums. partial=True: the TCP checksum field holds the pseudo-header sum
    (for a peer with GUEST_CSUM; deliver with NEEDS_CSUM, csum_start=l4, csum_offset=16).
    """
    _flags, gso_type, _hl, mss, _cs, _co = frame.vhdr
    h = parse(frame)
    l3, l4, hlen = h.l3, h.l4, h.l4_end
    mv = memoryview(frame)
    payload = mv[hlen:]
    total = len(payload)
    count = max(1, -(-total // mss))
    tmpl = bytearray(mv[:hlen])
    seq0 = _I.unpack_from(tmpl, l4 + 4)[0]
    tflags = tmpl[l4 + 13]
    doff_hi = tmpl[l4 + 12] << 8
    thl = hlen - l4
    # Checksums incrementally: the sums of the fixed header words once, plus the words that change per segment.
    _I.pack_into(tmpl, l4 + 4, 0)
    tmpl[l4 + 12] = tmpl[l4 + 13] = 0
    _H.pack_into(tmpl, l4 + 16, 0)
    tcp_fixed = csum_sum(tmpl[l4:hlen])
    if h.ipv6:
        addr_sum = csum_sum(mv[l3 + 8:l3 + 40])
    else:
        addr_sum = csum_sum(mv[l3 + 12:l3 + 20])
        ip_id0 = _H.unpack_from(tmpl, l3 + 4)[0]
        ihl = l4 - l3
        _H.pack_into(tmpl, l3 + 2, 0)
        _H.pack_into(tmpl, l3 + 4, 0)
        _H.pack_into(tmpl, l3 + 10, 0)
        ip_fixed = csum_sum(tmpl[l3:l4])
    sums = None if partial else csum_segments(payload, mss, count)
    pack_h = _H.pack_into
    pack_i = _I.pack_into
    join = b"".join
    out: list[bytes] = []
    for i in range(count):
        a = i * mss
        seg_len = min(mss, total - a)
        if h.ipv6:
            pack_h(tmpl, l3 + 4, thl + seg_len)
        else:
            tot = ihl + thl + seg_len
            ip_id = (ip_id0 + i) & 0xFFFF
            pack_h(tmpl, l3 + 2, tot)
            pack_h(tmpl, l3 + 4, ip_id)
            pack_h(tmpl, l3 + 10, 0xFFFF - (ip_fixed + tot + ip_id) % 0xFFFF)
        seq = (seq0 + a) & 0xFFFFFFFF
        pack_i(tmpl, l4 + 4, seq)
        f = tflags
        if i != count - 1:
            f &= ~(TCP_FIN | TCP_PSH)
        if i != 0:
            f &= ~TCP_CWR
        tmpl[l4 + 12] = doff_hi >> 8
        tmpl[l4 + 13] = f
        pseudo = addr_sum + IPPROTO_TCP + thl + seg_len
        if partial:
            pack_h(tmpl, l4 + 16, pseudo % 0xFFFF)
        else:
            pack_h(tmpl, l4 + 16, 0xFFFF - (pseudo + tcp_fixed + (seq >> 16) + (seq & 0xFFFF) + (doff_hi | f)
                                            + sums[i]) % 0xFFFF)
        out.append(join((tmpl, payload[a:a + seg_len])))
    return out

"""virtio-net device semantics over split rings: the virtio_net_hdr, tx gather, rx scatter (MRG_RXBUF).

Queue numbering is virtio-net's: rx of pair i is ring 2i, tx is 2i+1. The control queue stays in QEMU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .memory import GuestMemory
from .protocol import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    bit,
)
from .vring import RingError, Vring

#: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
NET_HDR = struct.Struct("<BBHHHHH")
NET_HDR_LEN = NET_HDR.size  # 12
LEGACY_NET_HDR_LEN = 10
#: Biggest frame accepted from a guest (64 KiB TSO frames later; plain MTU frames now).
MAX_FRAME = 65536 + 14
MIN_FRAME = 14


def offered_features(queue_pairs: int) -> int:
    f = (
        bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VHOST_USER_F_PROTOCOL_FEATURES)
    )
    if queue_pairs > 1:
        f |= bit(VIRTIO_NET_F_MQ)
    return f


@dataclass(slots=True)
class RxResult:
    """Outcome of one delivery: None drop_reason means delivered."""

    drop_reason: str | None


class VirtioNet:
    """The rings of one port and what a frame means on them."""

    def __init__(self, queue_pairs: int) -> None:
        self.queue_pairs = queue_pairs
        self.rings = [Vring(i) for i in range(2 * queue_pairs)]
        self.features = 0
        self.hdr_len = NET_HDR_LEN
        self.mem: GuestMemory | None = None

    def set_features(self, features: int) -> None:
        self.features = features
        modern = features & bit(VIRTIO_F_VERSION_1)
        mrg = features & bit(VIRTIO_NET_F_MRG_RXBUF)
        self.hdr_len = NET_HDR_LEN if (modern or mrg) else LEGACY_NET_HDR_LEN
        for r in self.rings:
            r.event_idx = bool(features & bit(VIRTIO_RING_F_EVENT_IDX))
            r.indirect = bool(features & bit(VIRTIO_RING_F_INDIRECT_DESC))

    @property
    def mrg_rxbuf(self) -> bool:
        return bool(self.features & bit(VIRTIO_NET_F_MRG_RXBUF))

    # ---- guest -> device -----------------------------------------------------------------------------------

    def pull_tx(self, ring: Vring, out: list[bytes], drops: dict[str, int], budget: int = 256) -> None:
        """Move up to `budget` frames from a tx ring into `out`; RingError stops the ring (caller logs)."""
        mem = self.mem
        assert mem is not None
        hdr_len = self.hdr_len
        n = min(ring.pending(), budget)
        for i in range(n):
            head = ring.head_at(i)
            segs = ring.chain(head, mem)
            if len(segs) == 1:
                s = segs[0]
                if s.writable:
                    raise RingError(f"tx descriptor chain {head} has a device-writable buffer")
                data = s.view[hdr_len:].tobytes() if len(s.view) >= hdr_len else b""
                total = len(s.view)
            else:
                parts = []
                for s in segs:
                    if s.writable:
                        raise RingError(f"tx descriptor chain {head} has a device-writable buffer")
                    parts.append(s.view)
                whole = b"".join(parts)
                total = len(whole)
                data = whole[hdr_len:]
            ring.put_used(head, 0)
            if total < hdr_len + MIN_FRAME:
                drops["tx_runt"] = drops.get("tx_runt", 0) + 1
            elif len(data) > MAX_FRAME:
                drops["tx_oversize"] = drops.get("tx_oversize", 0) + 1
            else:
                out.append(data)
                ring.counters.frames += 1
                ring.counters.bytes += len(data)
        ring.consume(n)
        if n:
            ring.publish_used()
        else:
            ring.request_kicks()

    # ---- device -> guest -----------------------------------------------------------------------------------

    def rx_ring(self) -> Vring | None:
        """The rx ring to deliver into: pair 0 if ready, else the first ready one (RSS comes later)."""
        for r in self.rings[0::2]:
            if r.ready:
                return r
        return None

    def push_rx(self, ring: Vring, frame: bytes) -> str | None:
        """Write one frame (with its header) into the ring; returns a drop reason or None.

        Raises RingError when the guest's buffers break the rules.
        """
        mem = self.mem
        assert mem is not None
        hdr_len = self.hdr_len
        need = hdr_len + len(frame)
        avail = ring.pending()
        if avail == 0:
            return "rx_no_buffers"
        chains: list[tuple[int, list]] = []
        capacity = 0
        limit = avail if self.mrg_rxbuf else 1
        while capacity < need and len(chains) < limit:
            head = ring.head_at(len(chains))
            segs = ring.chain(head, mem)
            for s in segs:
                if not s.writable:
                    raise RingError(f"rx descriptor chain {head} has a device-read-only buffer")
                capacity += len(s.view)
            chains.append((head, segs))
        if capacity < need:
            return "rx_no_buffers" if self.mrg_rxbuf else "rx_buffer_too_small"
        header = NET_HDR.pack(0, 0, 0, 0, 0, 0, len(chains))[:hdr_len]
        src = memoryview(header + frame)
        pos = 0
        for head, segs in chains:
            written = 0
            for s in segs:
                if pos >= need:
                    break
                take = min(len(s.view), need - pos)
                s.view[:take] = src[pos:pos + take]
                pos += take
                written += take
            ring.put_used(head, written)
        ring.consume(len(chains))
        ring.publish_used()
        ring.counters.frames += 1
        ring.counters.bytes += len(frame)
        return None

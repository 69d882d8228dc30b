"""virtio-net device semantics over split rings: the virtio_net_hdr, tx gather, rx scatter (MRG_RXBUF).

Queue numbering is virtio-net's: rx of pair i is ring 2i, tx is 2i+1. The control queue stays in QEMU.

With the native datapath (`native` set) the rx writes go through _datapath.c's rx_push (rx_native), which
hands back what it does not do (chained or indirect rx buffers) to the Python code here (_push_py).
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import NamedTuple

from .datapath import RX_DONE, RX_RING_ERROR, RX_STOPPED, RxBatchResult, rx_push
from .memory import GuestMemory
from .offload import (
    OFFLOAD_FEATURES,
    VHDR,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    OffloadError,
    OffloadRequest,
    TxFrame,
    complete_csum,
    segment_tcp,
    validate,
)
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
#: the header of a frame without offloads in one buffer: all zero, num_buffers 1
PLAIN_HDR = NET_HDR.pack(0, 0, 0, 0, 0, 0, 1)
#: Biggest frame accepted from a guest (a 64 KiB TSO frame: IP datagram of 64 KiB plus Ethernet and VLAN).
MAX_FRAME = 65535 + 18
MIN_FRAME = 14


#: bytes of a GSO frame the native datapath copies out of its arena: all that validate(), the switch and the
#: classifier read of a TCP GSO frame (Ethernet + two VLAN tags + IPv4 with options or IPv6 + TCP <= 142)
ARENA_PREFIX = 256


class ArenaSlot(NamedTuple):
    """Where a frame of the native datapath's tx batch lies: arena[meta[2 * index]:][:meta[2 * index + 1]]."""

    arena: object
    meta: object
    index: int


class ArenaTxFrame(TxFrame):
    """A TSO frame still in the native datapath's arena (valid until the next tx batch): the object holds the
    first ARENA_PREFIX bytes and len() is the whole frame's. A peer that takes the frame whole gets it copied
    from the arena straight into its buffers; segmentation and checksumming take the whole frame (full()).
    Saves a 64 KiB bytes object (allocation, page faults and copy) per TSO frame."""

    src: ArenaSlot  # the frame is arena[meta[2i]:][:meta[2i+1]]
    length: int

    def __len__(self) -> int:
        return self.length

    def full(self) -> TxFrame:
        arena, meta, i = self.src
        off = meta[2 * i]
        f = TxFrame(memoryview(arena)[off:off + meta[2 * i + 1]])
        f.vhdr = self.vhdr
        f.l4, f.l4_end = getattr(self, "l4", 0), getattr(self, "l4_end", 0)
        return f


def offered_features(queue_pairs: int) -> int:
    f = (
        bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VHOST_USER_F_PROTOCOL_FEATURES)
        | OFFLOAD_FEATURES
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
        #: the native datapath module (vhea.native.MOD) when the server runs it, else None (the Python path)
        self.native = None

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
        """Move up to `budget` frames from a tx ring into `out`; RingError stops the ring (caller logs).

        A frame whose header asks for an offload (NEEDS_CSUM or a GSO type) becomes a TxFrame carrying the
        header fields, checked here (a bad request is a counted drop with a reason); others are plain bytes.
        """
        mem = self.mem
        assert mem is not None
        hdr_len = self.hdr_len
        features = self.features
        chain = ring.chain
        counters = ring.counters
        n = min(ring.pending(), budget)
        frames = 0
        nbytes = 0
        heads = ring.heads(n)
        for head, v in zip(heads, ring.single_buffer_views(heads, mem), strict=True):
            parts = None
            if v is not None:
                total = len(v)
            else:
                segs = chain(head, mem)
                s = segs[0]
                if s.writable:
                    raise RingError(f"tx descriptor chain {head} has a device-writable buffer")
                v = s.view
                parts = [v]
                for s in segs[1:]:
                    if s.writable:
                        raise RingError(f"tx descriptor chain {head} has a device-writable buffer")
                    parts.append(s.view)
                total = sum(map(len, parts))
            if total < hdr_len + MIN_FRAME:
                drops["tx_runt"] = drops.get("tx_runt", 0) + 1
                continue
            if total - hdr_len > MAX_FRAME:
                drops["tx_oversize"] = drops.get("tx_oversize", 0) + 1
                continue
            if parts is None:
                hv = v
                v = v[hdr_len:]
            elif len(v) >= hdr_len:  # gather with one copy, skipping the header in the first buffer (as Linux)
                hv = v
                parts[0] = v[hdr_len:]
                v = b"".join(parts)
            else:
                hv = memoryview(b"".join(parts))
                v = hv[hdr_len:]
            if hv[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM or hv[1]:
                data = TxFrame(v)
                data.vhdr = OffloadRequest.unpack_from(hv, 0)
                try:
                    validate(data, features)
                except OffloadError as e:
                    drops[e.reason] = drops.get(e.reason, 0) + 1
                    continue
            else:
                data = v if type(v) is bytes else v.tobytes()
            out.append(data)
            frames += 1
            nbytes += len(data)
        ring.put_used_many([(h, 0) for h in heads])
        counters.frames += frames
        counters.bytes += nbytes
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

        A TxFrame's offloads are passed on when this port negotiated them, else done here (segmentation,
        checksums). Raises RingError when the guest's buffers break the rules.
        """
        if not isinstance(frame, TxFrame):
            return self._push(ring, frame, 0, 0, 0, 0, 0, 0)
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = frame.vhdr
        arena = type(frame) is ArenaTxFrame
        features = self.features
        if gso_type:
            partial = bool(features & bit(VIRTIO_NET_F_GUEST_CSUM))
            if self.takes_gso(gso_type):
                if arena:
                    return self._push_arena(ring, frame, NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len,
                                                                      gso_size, frame.l4, 16, 1))
                return self._push(ring, frame, VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size,
                                  frame.l4, 16)
            if arena:
                frame = frame.full()
            try:
                segments = segment_tcp(frame, partial)
            except OffloadError as e:
                return e.reason
            if partial:
                return self._push_many(ring, segments, VIRTIO_NET_HDR_F_NEEDS_CSUM, frame.l4, 16)
            return self._push_many(ring, segments, 0, 0, 0)
        if arena:
            frame = frame.full()
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if features & bit(VIRTIO_NET_F_GUEST_CSUM):
                return self._push(ring, frame, VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, csum_start, csum_offset)
            return self._push(ring, complete_csum(frame, csum_start, csum_offset), 0, 0, 0, 0, 0, 0)
        return self._push(ring, frame, 0, 0, 0, 0, 0, 0)

    def takes_gso(self, gso_type: int) -> bool:
        """Whether a GSO frame of `gso_type` goes to this port whole (it negotiated GUEST_CSUM and the matching
        GUEST_TSO4/6, and GUEST_ECN for an ECN frame); else push_rx segments it."""
        features = self.features
        want = VIRTIO_NET_F_GUEST_TSO4 if gso_type & 0x7F == VIRTIO_NET_HDR_GSO_TCPV4 else VIRTIO_NET_F_GUEST_TSO6
        return bool(features & bit(VIRTIO_NET_F_GUEST_CSUM) and features & bit(want) and (
            not gso_type & VIRTIO_NET_HDR_GSO_ECN or features & bit(VIRTIO_NET_F_GUEST_ECN)))

    def whole(self, frame: bytes) -> bool:
        """Whether push_rx writes `frame` as one frame (so a rx_no_buffers outcome wrote nothing of it), not as
        segments of which the first may have gone in before the buffers ran out."""
        return not isinstance(frame, TxFrame) or not frame.vhdr.gso_type or self.takes_gso(frame.vhdr.gso_type)

    def _push_many(self, ring: Vring, frames: list[bytes], flags: int, csum_start: int, csum_offset: int
                   ) -> str | None:
        if self.native is None:
            return self._push_many_py(ring, frames, flags, csum_start, csum_offset)
        meta = array("q")
        off = 0
        for f in frames:
            meta.append(off)
            meta.append(len(f))
            off += len(f)
        hdr = NET_HDR.pack(flags, 0, 0, 0, csum_start, csum_offset, 1)
        _f, _b, nobuf, small, err, _i = self.rx_native(ring, b"".join(frames), meta, 0, len(frames), hdr)
        if err is not None:
            raise RingError(err)
        return "rx_no_buffers" if nobuf else "rx_buffer_too_small" if small else None

    def push_rx_many(self, ring: Vring, frames: list[bytes], start: int, end: int, stop: bool = False
                     ) -> RxBatchResult:
        """Plain frames[start:end] into `ring`, the Python datapath's batch: the same outcome as _push_py frame by
        frame, but the single buffers of a batch are translated in one call (numpy for big batches) and the used
        ring is published once per batch; the result is as rx_native's, and it never raises RingError. With
        `stop` (flow control), the first frame without buffers ends the call: rx_no_buffers 1 and the index is
        that frame's."""
        mem = self.mem
        hl = self.hdr_len
        hdr = PLAIN_HDR[:hl]
        counters = ring.counters
        delivered = nbytes = nobuf = small = 0
        i = start
        while i < end:
            elems: list[tuple[int, int]] = []
            k = taken = b = 0
            try:
                avail = ring.pending()
                if avail:
                    k = min(avail, end - i)
                    heads = ring.heads(k)
                    for head, v in zip(heads, ring.single_buffer_views(heads, mem, writable=True), strict=True):
                        f = frames[i + taken]
                        need = hl + len(f)
                        if v is None or len(v) < need:
                            break
                        v[:hl] = hdr
                        v[hl:need] = f
                        elems.append((head, need))
                        b += len(f)
                        taken += 1
            except RingError:
                pass  # nothing written: the frame-by-frame path below meets the problem at the right frame
            if elems:
                ring.put_used_many(elems)
                ring.consume(taken)
                ring.publish_used()
                counters.frames += taken
                counters.bytes += b
                delivered += taken
                nbytes += b
                i += taken
            if i < end and taken < k or not k:  # frame i needs the general path (or meets the ring's problem)
                try:
                    reason = self._push_py(ring, frames[i], 0, 0, 0, 0, 0, 0)
                except RingError as e:
                    return RxBatchResult(delivered, nbytes, nobuf, small, str(e), i)
                if reason is None:
                    delivered += 1
                    nbytes += len(frames[i])
                elif reason == "rx_no_buffers":
                    nobuf += 1
                    if stop:
                        return RxBatchResult(delivered, nbytes, nobuf, small, None, i)
                else:
                    small += 1
                i += 1
        return RxBatchResult(delivered, nbytes, nobuf, small, None, end)

    def _push_many_py(self, ring: Vring, frames: list[bytes], flags: int, csum_start: int, csum_offset: int
                      ) -> str | None:
        """Several frames with the same (non-GSO) header into one ring: buffers translated in one call, one
        used/publish step per batch; a frame that does not fit one single buffer goes through _push."""
        mem = self.mem
        assert mem is not None
        hl = self.hdr_len
        hdr = NET_HDR.pack(flags, 0, 0, 0, csum_start, csum_offset, 1)[:hl]
        done = 0
        total = len(frames)
        counters = ring.counters
        while done < total:
            avail = ring.pending()
            if avail == 0:
                return "rx_no_buffers"
            k = min(avail, total - done)
            heads = ring.heads(k)
            elems = []
            nbytes = 0
            for head, v, f in zip(heads, ring.single_buffer_views(heads, mem, writable=True), frames[done:done + k],
                                  strict=True):
                need = hl + len(f)
                if v is None or len(v) < need:
                    break
                v[:hl] = hdr
                v[hl:need] = f
                elems.append((head, need))
                nbytes += len(f)
            if elems:
                ring.put_used_many(elems)
                ring.consume(len(elems))
                ring.publish_used()
                counters.frames += len(elems)
                counters.bytes += nbytes
                done += len(elems)
            if done < total and len(elems) < k:  # the next buffer needs the general path
                reason = self._push_py(ring, frames[done], flags, 0, 0, 0, csum_start, csum_offset)
                if reason is not None:
                    return reason
                done += 1
        return None

    def _push(self, ring: Vring, frame: bytes, flags: int, gso_type: int, hdr_len: int, gso_size: int,
              csum_start: int, csum_offset: int) -> str | None:
        if self.native is None:
            return self._push_py(ring, frame, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
        hdr = NET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 1)
        _f, _b, nobuf, small, err, _i = self.rx_native(ring, frame, array("q", (0, len(frame))), 0, 1, hdr)
        if err is not None:
            raise RingError(err)
        return "rx_no_buffers" if nobuf else "rx_buffer_too_small" if small else None

    def _push_arena(self, ring: Vring, frame: ArenaTxFrame, hdr: bytes) -> str | None:
        """An ArenaTxFrame whole into `ring`, copied from the arena (native datapath)."""
        arena, meta, i = frame.src
        _f, _b, nobuf, small, err, _i = self.rx_native(ring, arena, meta, i, i + 1, hdr)
        if err is not None:
            raise RingError(err)
        return "rx_no_buffers" if nobuf else "rx_buffer_too_small" if small else None

    def rx_native(self, ring: Vring, src, meta, start: int, end: int, hdr: bytes, stop: bool = False
                  ) -> RxBatchResult:
        """Frames meta[start:end] (offset, length pairs into `src`) into `ring` with the native datapath, each
        with the 12-byte header `hdr` (num_buffers filled in). Delivered frames are counted on the ring. A frame
        whose rx buffer is chained or indirect goes through the Python path (_push_py); never raises RingError.
        With `stop` (flow control) the first frame without buffers ends the call, as in push_rx_many.
        """
        nat = self.native
        mregions = self.mem.native(nat)
        mrg = self.mrg_rxbuf
        hl = self.hdr_len
        c = ring.counters
        frames = nbytes = nobuf = small = 0
        while start < end:
            i, ring.last_avail_idx, ring.used_idx, f, b, nb, sm, code, err = rx_push(
                nat, mregions, ring.view(), mrg, hl, src, meta, start, end, hdr, stop)
            c.frames += f
            c.bytes += b
            frames += f
            nbytes += b
            nobuf += nb
            small += sm
            if code == RX_DONE:
                break
            if code == RX_RING_ERROR:
                return RxBatchResult(frames, nbytes, nobuf, small, err, i)
            if code == RX_STOPPED:  # frame i found no buffers
                return RxBatchResult(frames, nbytes, nobuf, small, None, i)
            off, ln = meta[2 * i], meta[2 * i + 1]  # RX_NEEDS_PYTHON: this frame's buffer needs the general path
            try:
                reason = self._push_py(ring, bytes(memoryview(src)[off:off + ln]), *NET_HDR.unpack(hdr)[:6])
            except RingError as e:
                return RxBatchResult(frames, nbytes, nobuf, small, str(e), i)
            if reason is None:
                frames += 1
                nbytes += ln
            elif reason == "rx_no_buffers":
                nobuf += 1
                if stop:
                    return RxBatchResult(frames, nbytes, nobuf, small, None, i)
            else:
                small += 1
            start = i + 1
        return RxBatchResult(frames, nbytes, nobuf, small, None, end)

    def _push_py(self, ring: Vring, frame: bytes, flags: int, gso_type: int, hdr_len: int, gso_size: int,
                 csum_start: int, csum_offset: int) -> str | None:
        mem = self.mem
        assert mem is not None
        hl = self.hdr_len
        flen = len(frame)
        need = hl + flen
        avail, head, v = ring.peek_rx_buffer(mem)
        if avail == 0:
            return "rx_no_buffers"
        if v is not None and len(v) >= need:  # the common case: header and frame in one buffer
            if flags | gso_type:
                VHDR.pack_into(v, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
                if hl == NET_HDR_LEN:
                    v[10:12] = b"\x01\x00"
            else:
                v[:hl] = PLAIN_HDR if hl == NET_HDR_LEN else PLAIN_HDR[:hl]
            v[hl:need] = frame
            ring.complete_one(head, need)
            c = ring.counters
            c.frames += 1
            c.bytes += flen
            return None
        # several buffers (MRG_RXBUF) or a chained buffer: collect views until the frame fits
        chains, capacity = ring.gather(mem, need, avail if self.mrg_rxbuf else 1, self.mrg_rxbuf)
        if capacity < need:
            return "rx_no_buffers" if self.mrg_rxbuf else "rx_buffer_too_small"
        first = chains[0][1][0]
        if len(first) < hl:  # the spec wants the header in the first buffer; a guest that breaks it loses the frame
            return "rx_buffer_too_small"
        first[:hl] = NET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, len(chains))[:hl]
        src = memoryview(frame)
        pos = 0
        off = hl
        elems = []
        for head, views in chains:
            written = off
            for v in views:
                take = len(v) - off
                if take > flen - pos:
                    take = flen - pos
                v[off:off + take] = src[pos:pos + take]
                pos += take
                written += take
                off = 0
            elems.append((head, written))
            off = 0
        ring.put_used_many(elems)
        ring.consume(len(chains))
        ring.publish_used()
        ring.counters.frames += 1
        ring.counters.bytes += flen
        return None

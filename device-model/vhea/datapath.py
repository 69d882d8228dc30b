"""The Python side of the native datapath (_datapath.c): its two calls taking a RingView, with named results.

The C functions return plain tuples (cheapest to build there); they are named here, once per batch, so no
caller unpacks seven or nine positions by heart. Loading the module is vhea.native's business.
"""

from __future__ import annotations

from typing import NamedTuple

from .vring import RingView

#: RxPushResult.code: what ended an rx_push call
RX_DONE = 0
RX_NEEDS_PYTHON = 1  # frame `index` meets a chained or indirect rx buffer: the Python path writes it
RX_RING_ERROR = 2  # the ring broke a rule at frame `index`; `error` says which
RX_STOPPED = 3  # stop was asked and frame `index` found no buffers


class TxPullResult(NamedTuple):
    """tx_pull: heads consumed, frames and bytes copied into the arena, runt and oversize frames dropped, runs
    written, and the ring error (then nothing was consumed and the used ring is untouched)."""

    consumed: int
    frames: int
    nbytes: int
    runts: int
    oversize: int
    runs: int
    error: str | None


class RxPushResult(NamedTuple):
    """rx_push: the frame it stopped at, the ring's new indices, frames and bytes written, frames dropped for lack
    of buffers or for a buffer too small, why it ended (RX_*) and the ring error (RX_RING_ERROR only)."""

    index: int
    last_avail_idx: int
    used_idx: int
    frames: int
    nbytes: int
    no_buffers: int
    too_small: int
    code: int
    error: str | None


class RxBatchResult(NamedTuple):
    """A batch delivered into one rx ring (VirtioNet.rx_native, push_rx_many): frames and bytes delivered, frames
    dropped as rx_no_buffers and rx_buffer_too_small, the ring error or None, and the index of the frame that
    hit it (the batch's end when nothing did)."""

    frames: int
    nbytes: int
    no_buffers: int
    too_small: int
    error: str | None
    index: int


def tx_pull(module, memory, ring: RingView, budget: int, hdr_len: int, arena, meta, runs) -> TxPullResult:
    """Take up to `budget` tx chains of `ring` into `arena` (see _datapath.c); `memory` is GuestMemory.native()."""
    return TxPullResult._make(module.tx_pull(
        memory, ring.desc, ring.avail, ring.used, ring.num, ring.last_avail_idx, ring.used_idx, ring.event_idx,
        ring.indirect, budget, hdr_len, arena, meta, runs))


def rx_push(module, memory, ring: RingView, mrg_rxbuf: bool, hdr_len: int, src, meta, start: int, end: int,
            hdr: bytes, stop: bool) -> RxPushResult:
    """Write frames meta[start:end] of `src` into `ring` (see _datapath.c); `memory` is GuestMemory.native()."""
    return RxPushResult._make(module.rx_push(
        memory, ring.desc, ring.avail, ring.used, ring.num, ring.last_avail_idx, ring.used_idx, ring.event_idx,
        mrg_rxbuf, hdr_len, src, meta, start, end, hdr, stop))

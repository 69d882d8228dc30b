"""The tx service: a tx ring's available frames taken as one batch (at most TX_BUDGET, fewer when paced) and
handed to forwarding (delivery.py) one run of frames at a time. Two datapaths with the same semantics: the
Python one (VirtioNet.pull_tx) is the reference; the native one (_datapath.c's tx_pull into an arena) does
the inner loops in C. A Server mixin (loop.py).
"""

from __future__ import annotations

import time
from array import array

from ..datapath import tx_pull
from ..forwarding import mac_runs
from ..net import ARENA_PREFIX, MAX_FRAME, NET_HDR_LEN, ArenaSlot, ArenaTxFrame
from ..offload import OffloadError, OffloadRequest, TxFrame, validate
from ..pause import Backlog, FlowControl
from ..vring import RingError, Vring
from .port import Port, PortRing

#: frames taken from one tx ring before other rings get a turn
TX_BUDGET = 256
#: the native datapath copies a tx batch here (header + frame each, 8-byte aligned); a batch stops when full
ARENA_BYTES = 4 << 20


class TxService:
    """Tx rings serviced in batches (mixed into Server). Uses _forward and _forward_run (delivery.py) and
_stop_ring (session.py)."""

    # the Server's state this mixin uses (set in loop.Server.__init__; the arena only with the native datapath)
    _native: object | None
    _arena: bytearray
    _arena_view: memoryview
    _meta: array
    _runs: array
    _flow: FlowControl
    _busy: set[PortRing]
    _touched: set[PortRing]
    _paced: set[PortRing]
    _src: PortRing | None
    _hold: Backlog | None

    def _init_arena(self) -> None:
        """The native datapath's buffers: the arena frames are copied into and the per-batch index arrays."""
        assert ARENA_BYTES >= NET_HDR_LEN + MAX_FRAME
        self._arena = bytearray(ARENA_BYTES)
        self._arena_view = memoryview(self._arena)
        self._meta = array("q", bytes(8 * 2 * TX_BUDGET))
        self._runs = array("q", bytes(8 * 4 * TX_BUDGET))

    def _service_tx(self, port: Port, ring: Vring) -> None:
        assert port.handler is not None
        if self._flow and self._flow.paused(port, ring):
            return  # paused by a receiver: _drain_held services it again when its held frames are gone
        if port.pacer.rate_bps and not port.pacer.ready(time.monotonic()):
            self._paced.add((port, ring))  # frames wait in the guest's ring: back-pressure, not loss
            return
        if self._native is not None:
            self._service_tx_native(port, ring)
            return
        device = port.handler.device
        frames: list[bytes] = []
        # paced: a batch that roughly fits the tokens (frame sizes are known only after the pull)
        budget = min(TX_BUDGET, max(1, int(port.pacer.tokens) // 1514)) if port.pacer.rate_bps else TX_BUDGET
        try:
            device.pull_tx(ring, frames, port.drops, budget)
            more = ring.pending(fence=True) > 0
        except RingError as e:
            self._stop_ring(port, ring, str(e))
            more = False
        if more:
            self._busy.add((port, ring))
        if ring.error is None:
            self._touched.add((port, ring))
        if not frames:
            return
        nbytes = sum(map(len, frames))
        if port.pacer.rate_bps:
            port.pacer.consume(nbytes)
        port.from_guest_frames += len(frames)
        port.from_guest_bytes += nbytes
        # one switch decision per run of plain frames with the same MAC addresses, one rx pass per ring
        self._src = (port, ring)
        try:
            for run in mac_runs(frames):
                if run.single:  # a TxFrame (offload request): frame by frame
                    self._forward(port, frames[run.start])
                else:
                    self._forward_run(port, frames[run.start], run.start, run.end, frames)
        finally:
            self._src = self._hold = None

    # ---- the native datapath: the same semantics per batch (the Python method above is the reference) ----

    def _service_tx_native(self, port: Port, ring: Vring) -> None:
        """A tx batch through _datapath.c: chains walked and checked, frames copied into the arena, used ring
        written, all in one call; then one switch decision per run of frames with the same MAC addresses and
        one rx_push call per destination ring. Frames with offload requests take the reference path."""
        device = port.handler.device
        budget = min(TX_BUDGET, max(1, int(port.pacer.tokens) // 1514)) if port.pacer.rate_bps else TX_BUDGET
        meta, runs, arena = self._meta, self._runs, self._arena
        hl = device.hdr_len
        nframes = nruns = 0
        try:
            consumed, nframes, nbytes, runts, oversize, nruns, err = tx_pull(
                self._native, device.mem.native(self._native), ring.view(), budget, hl, arena, meta, runs)
            if err is not None:
                raise RingError(err)
            ring.last_avail_idx = (ring.last_avail_idx + consumed) & 0xFFFF
            ring.used_idx = (ring.used_idx + consumed) & 0xFFFF
            if runts:
                port.drop("tx_runt", runts)
            if oversize:
                port.drop("tx_oversize", oversize)
            offload: dict[int, TxFrame] = {}
            for r in range(nruns):  # offload requests are checked before anything is counted (as pull_tx)
                if runs[4 * r + 2]:
                    first = runs[4 * r]
                    off, ln = meta[2 * first], meta[2 * first + 1]
                    vhdr = OffloadRequest.unpack_from(arena, off - hl)
                    if vhdr.gso_type and ln > ARENA_PREFIX:  # GSO: only the headers leave the arena (ArenaTxFrame)
                        data = ArenaTxFrame(self._arena_view[off:off + ARENA_PREFIX])
                        data.length = ln
                        data.src = ArenaSlot(arena, meta, first)
                    else:
                        data = TxFrame(self._arena_view[off:off + ln])
                    data.vhdr = vhdr
                    try:
                        validate(data, device.features)
                    except OffloadError as e:
                        port.drop(e.reason)
                        nframes -= 1
                        nbytes -= ln
                        data = None
                    offload[r] = data
            ring.counters.frames += nframes
            ring.counters.bytes += nbytes
            more = ring.pending(fence=True) > 0
        except RingError as e:
            self._stop_ring(port, ring, str(e))
            more = False
            nframes = nruns = 0
        if more:
            self._busy.add((port, ring))
        if ring.error is None:
            self._touched.add((port, ring))
        if not nframes and not nruns:
            return
        if port.pacer.rate_bps:
            port.pacer.consume(nbytes)
        port.from_guest_frames += nframes
        port.from_guest_bytes += nbytes
        arena_view = self._arena_view
        self._src = (port, ring)
        try:
            for r in range(nruns):
                first, count = runs[4 * r], runs[4 * r + 1]
                if runs[4 * r + 2]:
                    data = offload[r]
                    if data is not None:
                        self._forward(port, data)
                    continue
                if not port.link_up:
                    port.drop("link_down", count)
                    continue
                off = meta[2 * first]
                self._forward_run(port, bytes(arena_view[off:off + 12]), first, first + count)
        finally:
            self._src = self._hold = None

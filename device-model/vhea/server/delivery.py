"""Forwarding and rx delivery: each run of a tx batch (frames with the same MAC addresses) takes one switch
decision (forwarding.py) and goes into each destination ring in one pass, classified frame by frame when the
port has several queue pairs.

Flow control (pause.py decides, this module drives it): a receiving port with pause on holds frames for a rx
queue without buffers instead of dropping them, and the tx queue they came from is not serviced until they
are delivered or the pause limit is reached (_hold_begin, _drain_held). Nothing of it runs while nothing is
held. A Server mixin (loop.py): `_src` is the tx ring whose batch is being forwarded, `_hold` its Backlog once
a frame of the batch was held; None while a tap's frames are forwarded (tapservice.py).
"""

from __future__ import annotations

import logging
import time
from array import array

from ..classifier import select_rx_ring
from ..forwarding import egress, refusal, ring_segments
from ..net import PLAIN_HDR
from ..pause import Backlog, FlowControl, holds, no_buffers_reason
from ..switch import Switch
from ..vring import RingError, Vring
from .port import Port, PortRing

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package


class Delivery:
    """Frames from a tx batch to the destination ports' rx rings (mixed into Server). Uses _stop_ring
(session.py), and _tap_write, _tap_write_run (tapservice.py) for tap ports."""

    # the Server's state this mixin uses (set in loop.Server.__init__; the arena only with the native datapath)
    ports: dict[str, Port]
    switch: Switch
    _arena: bytearray
    _arena_view: memoryview
    _meta: array
    _flow: FlowControl
    _busy: set[PortRing]
    _touched: set[PortRing]
    _src: PortRing | None
    _hold: Backlog | None

    def _forward_run(self, port: Port, macs: bytes, start: int, end: int, frames: list[bytes] | None = None) -> None:
        """_forward for a run of plain frames that share their MAC addresses (`macs`: the first 12 bytes), taken
        from `frames`, or, with the native datapath, from the arena (frames None)."""
        dsts, drop = egress(self.switch, port.name, port.link_up, macs)
        if drop is not None:
            port.drop(drop, end - start)
            return
        for name in dsts:
            self._deliver_run(self.ports[name], start, end, frames)

    def _frame(self, i: int, frames: list[bytes] | None) -> bytes:
        if frames is not None:
            return frames[i]
        off = self._meta[2 * i]
        return bytes(self._arena_view[off:off + self._meta[2 * i + 1]])

    def _deliver_run(self, port: Port, start: int, end: int, frames: list[bytes] | None = None) -> None:
        """_deliver for frames[start:end] (or meta[start:end] of the arena: native datapath)."""
        if port.ifname is not None:  # a tap port (tapservice.py)
            self._tap_write_run(port, start, end, frames)
            return
        reason = refusal(port.link_up, port.handler is not None)
        if reason is not None:
            port.drop(reason, end - start)
            return
        device = port.handler.device
        rings = device.rings
        if len(rings) <= 2:  # one queue pair: nothing to classify (select_rx_ring)
            ring = rings[0] if rings and rings[0].ready else None
            self._push_run(port, device, ring, start, end, frames)
            return
        if self._hold is not None:  # held: classified when delivered (counted once)
            self._hold_frames(port, start, end, frames)
            return
        classifier = port.classifier
        for ring, seg, seg_end in ring_segments(lambda i: select_rx_ring(classifier, rings, self._frame(i, frames)),
                                                start, end):
            self._push_run(port, device, ring, seg, seg_end, frames)
            if self._hold is not None and seg_end < end:
                self._hold_frames(port, seg_end, end, frames)
                return

    def _push_run(self, port: Port, device, ring: Vring | None, start: int, end: int,
                  frames: list[bytes] | None) -> None:
        if ring is None:
            port.drop("rx_queue_not_ready", end - start)
            return
        if self._hold is not None:  # an earlier frame of this batch is held: the rest waits behind it
            self._hold_frames(port, start, end, frames)
            return
        # flow control: stop at a frame without buffers (not for frames from a tap: no tx queue to pause)
        stop = self._src is not None and holds(port, ring.index)
        if frames is None:
            done, nbytes, nobuf, small, err, at = device.rx_native(ring, self._arena, self._meta, start, end,
                                                                   PLAIN_HDR, stop)
        else:
            done, nbytes, nobuf, small, err, at = device.push_rx_many(ring, frames, start, end, stop)
        if done:
            port.to_guest_frames += done
            port.to_guest_bytes += nbytes
            self._touched.add((port, ring))
            if port.stalled:
                port.stalled.discard(ring.index)
        if nobuf:
            if stop:  # frame `at` found no buffers: it and the rest of the batch are held, its tx queue paused
                self._hold_begin(port, ring)
                self._hold_frames(port, at, end, frames)
            else:
                port.drop(no_buffers_reason(port, ring.index), nobuf, queue=ring.index)
        if small:
            port.drop("rx_buffer_too_small", small, queue=ring.index)
        if err is not None:
            self._stop_ring(port, ring, err)
            port.drop("rx_ring_error", queue=ring.index)
            for i in range(at + 1, end):  # the rest frame by frame (another ring, or a drop)
                self._deliver(port, self._frame(i, frames))

    def _forward(self, ingress: Port, frame: bytes) -> None:
        dsts, drop = egress(self.switch, ingress.name, ingress.link_up, frame)
        if drop is not None:
            ingress.drop(drop)
            return
        for name in dsts:
            self._deliver(self.ports[name], frame)

    def _deliver(self, port: Port, frame: bytes) -> None:
        if self._hold is not None:  # an earlier frame of this batch is held: this one waits behind it
            self._hold.add(port.name, frame)
            return
        ring = self._push_one(port, frame)
        if ring is not None:
            if self._src is None:  # a frame from a tap: nothing to pause, dropped
                port.drop(no_buffers_reason(port, ring.index), queue=ring.index)
                return
            self._hold_begin(port, ring).add(port.name, frame)

    def _push_one(self, port: Port, frame: bytes) -> Vring | None:
        """One frame into `port` (classified), or dropped with a reason; the rx ring when the frame found no
        buffers there, nothing of it was written, and the port pauses its senders (the caller holds it)."""
        if port.ifname is not None:  # a tap port (tapservice.py): written or dropped, never held
            self._tap_write(port, frame)
            return None
        reason = refusal(port.link_up, port.handler is not None)
        if reason is not None:
            port.drop(reason)
            return None
        device = port.handler.device
        ring = select_rx_ring(port.classifier, device.rings, frame)
        if ring is None:
            port.drop("rx_queue_not_ready")
            return None
        hold = holds(port, ring.index)
        try:
            if hold and not ring.pending():
                return ring
            reason = device.push_rx(ring, frame)
        except RingError as e:
            self._stop_ring(port, ring, str(e))
            port.drop("rx_ring_error", queue=ring.index)
            return None
        if reason is not None:
            if reason == "rx_no_buffers":
                if hold and device.whole(frame):
                    return ring
                reason = no_buffers_reason(port, ring.index)
            port.drop(reason, queue=ring.index)
            return None
        port.to_guest_frames += 1
        port.to_guest_bytes += len(frame)
        self._touched.add((port, ring))
        if port.stalled:
            port.stalled.discard(ring.index)
        return None

    # ---- flow control (pause.py): held frames and paused tx queues ------------------------------------------

    def _hold_begin(self, port: Port, ring: Vring) -> Backlog:
        """`port`'s rx `ring` has no buffers for a frame of the batch being forwarded, and `port` pauses its
        senders: the batch's tx queue is paused (_service_tx skips it) and the rest of the batch is held."""
        assert self._src is not None and self._hold is None
        src, tx = self._src
        self._hold = self._flow.begin(src, tx, port, ring, time.monotonic())
        return self._hold

    def _hold_frames(self, port: Port, start: int, end: int, frames: list[bytes] | None) -> None:
        add = self._hold.entries.append
        name = port.name
        for i in range(start, end):
            add((name, self._frame(i, frames)))  # from the arena: a copy (bytes)

    def _drain_held(self) -> None:
        """Each loop turn while frames are held: pause.FlowControl.drain delivers what the receivers take now and
        drops what waited too long; a tx queue whose frames are gone is serviced again."""
        now = time.monotonic()
        drained = self._flow.drain(now, self._push_one, self.ports.get)
        for t in drained.timeouts:
            if t.count == 1 or t.count % 100 == 0:
                log.info("port %s: queue %d kept a tx queue paused for %d us: pause limit reached (%d times "
                         "so far); frames for it are dropped until it posts rx buffers", t.port.name, t.queue,
                         t.waited_us, t.count)
        for bl in drained.resumed:
            src = bl.port
            if src.handler is not None and bl.ring.ready:
                self._busy.add((src, bl.ring))

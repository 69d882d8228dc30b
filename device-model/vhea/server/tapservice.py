"""Tap ports: a TAP device (vhea.tap) on the switch like a guest port. A Server mixin (loop.py).

The device's fd is non-blocking and watched by the loop's selector. A readable tap is read in batches of at
most TAP_BUDGET frames per loop pass (a flooding peer must not keep the loop from the other ports): a tap whose
budget ran out stays in `_tap_busy` and is read again at the next pass, after the other events. Its frames are
forwarded as a guest's tx batch (one switch decision per run of frames with the same MAC addresses; frames
with offload requests one by one, so a guest that did not negotiate TSO gets them segmented by push_rx).
Flow control does not hold frames from a tap (there is no tx queue to pause: the kernel's queue is the
back-pressure): a receiver without buffers drops them.

Frames to a tap are written one by one from Python (os.writev of header and frame), with either datapath;
a write that would block is a drop (tap_full), never a wait.
"""

from __future__ import annotations

import logging
import selectors

from ..forwarding import mac_runs, refusal
from ..tap import TapDevice
from .port import Port, PortRing

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package

#: frames read from one tap per loop pass
TAP_BUDGET = 64


class TapService:
    """Tap devices opened, read and written (mixed into Server). Uses _forward and _forward_run (delivery.py),
_frame (delivery.py) and _unregister (loop.py)."""

    # the Server's state this mixin uses (set in loop.Server.__init__)
    sel: selectors.BaseSelector
    _tap_busy: set[Port]
    _src: PortRing | None

    def _open_tap(self, port: Port) -> None:
        """Create the port's TAP device (DOWN, no address) and watch it; OSError if it cannot be made."""
        assert port.ifname is not None
        port.tap = TapDevice.create(port.ifname)
        self.sel.register(port.tap.fd, selectors.EVENT_READ, ("tap", port))
        log.info("port %s: TAP device %s created (vnet header, checksum and TSO offloads)", port.name, port.ifname)

    def _close_tap(self, port: Port) -> None:
        if port.tap is None:
            return
        self._unregister(port.tap.fd)
        port.tap.close()
        port.tap = None
        self._tap_busy.discard(port)
        log.info("port %s: TAP device %s removed", port.name, port.ifname)

    def _service_taps(self) -> None:
        """One budget of reads for each tap that was readable or had frames left at the last pass."""
        busy, self._tap_busy = self._tap_busy, set()
        for port in busy:
            if port.tap is not None:
                self._service_tap(port)

    def _service_tap(self, port: Port) -> None:
        batch = port.tap.read_batch(TAP_BUDGET)
        if batch.more:
            self._tap_busy.add(port)
        for reason, n in batch.drops.items():
            port.drop(reason, n)
        frames = batch.frames
        if not frames:
            return
        port.from_guest_frames += len(frames)
        port.from_guest_bytes += sum(map(len, frames))
        assert self._src is None  # no tx ring: delivery drops rather than holds (no sender queue to pause)
        for run in mac_runs(frames):
            if run.single:  # a TxFrame (offload request): frame by frame
                self._forward(port, frames[run.start])
            else:
                self._forward_run(port, frames[run.start], run.start, run.end, frames)

    def _tap_write_run(self, port: Port, start: int, end: int, frames: list[bytes] | None) -> None:
        """Frames [start:end] of a batch (from `frames`, or the native datapath's arena) to a tap port."""
        for i in range(start, end):
            self._tap_write(port, self._frame(i, frames))

    def _tap_write(self, port: Port, frame: bytes) -> None:
        reason = refusal(port.link_up, port.tap is not None)
        if reason is None:
            reason = port.tap.write(frame)
        if reason is not None:
            port.drop(reason)
            return
        port.to_guest_frames += 1
        port.to_guest_bytes += len(frame)

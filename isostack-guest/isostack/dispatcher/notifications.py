"""Notifications: events posted to the per-CPU notification rings, their doorbells, and readiness eventfds.

An event goes to the notification ring the front-end names in the socket's C_NOTIF_RING (one ring per
application CPU: the CPU of the thread that last waited on the socket).  A ring's doorbell eventfd is rung
only if a thread announced in the ring's sleepers that it sleeps; otherwise the doorbell is saved (R_SAVED,
per ring, in shared memory, and "saved" in the stats).  The same interrupt mitigation applies to the
readiness eventfd of a watched socket (selectors/asyncio users): it is written only when armed.
"""

from __future__ import annotations

import errno
import logging

from .. import native
from ..layout import (
    C_ERR,
    C_NOTIF_RING,
    C_RES_SEQ,
    C_RES_VAL,
    C_TX_WANT,
    C_WATCH_ARMED,
    EV_DONE,
    EV_ERR,
    EV_TX,
    R_RUNG,
    R_SAVED,
    R_SLEEPERS,
    ST_CLOSED,
    ST_ERROR,
)
from . import ringio
from .kernel import EventfdBlocked, EventfdWriter, KernelSockets
from .state import U64, SharedState, SocketSlot
from .trace import DOORBELL, NOTIFIED

log = logging.getLogger("isostackd")

NATIVE = native.load_dispatch()  # the C post (_dispatch.c), else ringio's Python reference


class Notifier:
    """Posts events and command results to the applications, and rings their doorbells once per loop."""

    def __init__(self, shared: SharedState, kernel_sockets: KernelSockets):
        self.shared = shared
        self.kernel_sockets = kernel_sockets
        self.eventfds = EventfdWriter(shared.stats)

    def post(self, slot: SocketSlot, events: int) -> None:
        """Post to the ring the front-end chose for this socket.  An impossible choice goes to ring 0 and fails
        the socket at the end of this loop (failing it here would close the kernel socket under the caller)."""
        app = slot.app
        words = app.region.q
        ring = words[slot.control_word + C_NOTIF_RING]
        if ring >= app.ring_count:
            ring = 0
            if not slot.state & ST_ERROR:
                self.shared.bad_ring.append(slot)
        if NATIVE is not None:
            header, entries = app.ring_addrs[ring]
            NATIVE.notify(header, entries, app.geometry.notif_slots, slot.index, events,
                          words[slot.control_word + C_RES_SEQ])
        else:
            ringio.notify(app.rings[ring], slot.index, events, words[slot.control_word + C_RES_SEQ])
        app.rings_posted.add(ring)
        if self.shared.trace is not None:
            self.shared.trace(NOTIFIED, slot.index)
        if slot.index in app.readiness_fds:  # a selector/asyncio user: its eventfd, if armed, after the fence
            self.shared.watch_pending.add(slot)

    def complete(self, slot: SocketSlot, pos: int, value: int) -> None:
        """The result of the command at queue position `pos`."""
        words = slot.app.region.q
        words[slot.control_word + C_RES_VAL] = value & U64
        words[slot.control_word + C_RES_SEQ] = pos + 1
        self.post(slot, EV_DONE)

    def fail(self, slot: SocketSlot, err: int, reason: str) -> None:
        """Fail one socket: kernel socket closed, error to its owner; every other socket is untouched."""
        log.warning("app %d socket %d failed: %s", slot.app.id, slot.index, reason)
        self.kernel_sockets.close(slot)
        words = slot.app.region.q
        words[slot.control_word + C_ERR] = err
        words[slot.control_word + C_RES_VAL] = -err & U64
        words[slot.control_word + C_RES_SEQ] = slot.command_queue.head
        slot.set_state((slot.state | ST_ERROR) & ~ST_CLOSED)
        self.post(slot, EV_ERR)

    def fail_bad_rings(self) -> None:
        """After the loop: fail the sockets that named a notification ring that does not exist."""
        bad_ring = self.shared.bad_ring
        while bad_ring:
            slot = bad_ring.pop()
            if not slot.state & ST_ERROR and not slot.app.region.mm.closed:
                self.shared.stats["bad_entries"] += 1
                self.fail(slot, errno.EINVAL,
                          f"notification ring {slot.app.region.q[slot.control_word + C_NOTIF_RING]} does not exist")

    def ring_doorbells(self) -> None:
        """Fence, then read what the front-ends announced (TX_WANT, sleepers): the Dekker pairing of our
        head/tail/result stores with their "announce, then re-check" (a locked add on their side)."""
        shared = self.shared
        progress = shared.tx_progress
        if not progress and not shared.watch_pending and not any(a.rings_posted for a in shared.apps.values()):
            return
        native.fence()
        if progress:
            for slot in progress:  # TX_WANT counts front-end threads waiting for credits; they clear it
                if slot.kernel_socket is not None and slot.app.region.q[slot.control_word + C_TX_WANT]:
                    self.post(slot, EV_TX)
            progress.clear()
        if shared.watch_pending:
            self._write_readiness_fds()
        stats = shared.stats
        for app in [a for a in shared.apps.values() if a.rings_posted]:
            words = app.region.q
            for ring in app.rings_posted:
                ring_word = app.ring_words[ring]
                sleepers = words[ring_word + R_SLEEPERS]
                if sleepers:
                    try:  # a semaphore eventfd: one token per sleeping thread
                        self.eventfds.write(app.doorbells[ring], min(sleepers, 1 << 16))
                    except EventfdBlocked:
                        shared.failed_apps.append((app, "doorbell eventfd would block"))
                    words[ring_word + R_RUNG] = (words[ring_word + R_RUNG] + 1) & U64  # the application's: wraps
                    stats["rung"] += 1
                    if shared.trace is not None:
                        shared.trace(DOORBELL, ring)
                else:
                    words[ring_word + R_SAVED] = (words[ring_word + R_SAVED] + 1) & U64  # the application's: wraps
                    stats["saved"] += 1
            app.rings_posted.clear()

    def _write_readiness_fds(self) -> None:
        """Write a watched socket's readiness eventfd only if its front-end armed it (C_WATCH_ARMED: it drained
        the eventfd after a call that would block), and disarm it: the same interrupt mitigation as the
        per-CPU doorbells.  Unarmed, the eventfd still holds our previous write, so the application is awake
        anyway (watch_saved counts those).  Called after the fence: the Dekker pair of the front-end's
        "arm (xchg), drain, re-check"."""
        stats = self.shared.stats
        for slot in self.shared.watch_pending:
            app = slot.app
            fd = app.readiness_fds.get(slot.index)
            if fd is None or app.region.mm.closed:
                continue
            words = app.region.q
            if words[slot.control_word + C_WATCH_ARMED]:
                words[slot.control_word + C_WATCH_ARMED] = 0
                stats["watch_writes"] += 1
                try:
                    self.eventfds.write(fd, 1)
                except EventfdBlocked:
                    self.shared.failed_apps.append((app, "readiness eventfd would block"))
            else:
                stats["watch_saved"] += 1
        self.shared.watch_pending.clear()

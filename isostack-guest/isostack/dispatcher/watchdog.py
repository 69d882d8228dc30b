"""The stranded-ring watchdog: a safety net against a lost wake-up on the tx path.

A tx ring is stranded when it holds data that nobody will drain: the draining flag is set but no SEND is
queued and we do not drain it (a front-end won the flag and never posted, e.g. its post failed), or we drain
it but track neither the ring nor its EPOLLOUT.  The watchdog looks for such rings at most every
STRANDED_CHECK_S while the dispatcher is idle, and adopts one once the same state held for STRANDED_S (a
front-end between its xchg and its SEND is microseconds away from posting, even preempted far less than this).
It turns a hang into a counted stall of about STRANDED_S (tx_stranded in the stats) and a warning naming the
socket.
"""

from __future__ import annotations

import logging
import select

from ..layout import C_DRAINING, C_TX_TAIL, ST_CONNECTED, ST_ERROR, ST_TX_SHUT
from ..queues import EMPTY
from .datapath import DataPath
from .state import SharedState, SocketSlot, StrandedSighting

log = logging.getLogger("isostackd")

STRANDED_CHECK_S = 0.25
STRANDED_S = 0.5


class StrandedRingWatchdog:
    """Finds stranded tx rings and drains them."""

    def __init__(self, shared: SharedState, datapath: DataPath):
        self.shared = shared
        self.datapath = datapath
        self.last_check = 0.0  # monotonic time of the last check

    def check_if_due(self, now: float) -> None:
        if now - self.last_check >= STRANDED_CHECK_S:
            self.last_check = now
            self.check(now)

    def check(self, now: float) -> None:
        """A ring adopted with the flag set whose SEND arrives later was only slow (a front-end thread
        descheduled between its xchg and its post, e.g. waiting for the GIL): tx_stranded_late_send counts
        those, so tx_stranded minus it is the SENDs really lost.  A connected socket's tx ring holds data nobody
        will drain when either we drain it (draining) but it is neither in tx_active nor waiting for EPOLLOUT,
        or we do not drain it while its draining flag is set and no command is queued (the front-end that set
        the flag owes us a SEND).  The second state is normal for the microseconds between a front-end's xchg
        and its SEND, so it is adopted only when it held, with the same tail, for STRANDED_S."""
        for app in self.shared.apps.values():
            if app.region.mm.closed:
                continue
            words = app.region.q
            for slot in app.sockets:
                if (slot.kernel_socket is None or slot.dead or not slot.state & ST_CONNECTED
                        or slot.state & (ST_ERROR | ST_TX_SHUT)):
                    slot.stranded = None
                    continue
                tail = words[slot.control_word + C_TX_TAIL]
                if tail == slot.tx_head:
                    slot.stranded = None
                    continue
                if slot.draining:
                    slot.stranded = None
                    if slot not in self.shared.tx_active and not slot.epoll_mask & select.EPOLLOUT:
                        self._adopt(slot, "drained but not tracked")
                    continue
                if not words[slot.control_word + C_DRAINING] or slot.command_queue.poll()[0] != EMPTY:
                    slot.stranded = None  # the front-end posts (flag clear) or its SEND is queued
                    continue
                if slot.stranded is None or slot.stranded.tx_tail != tail:
                    slot.stranded = StrandedSighting(now, tail)
                elif now - slot.stranded.first_seen >= STRANDED_S:
                    slot.stranded = None
                    slot.send_owed = tail
                    self._adopt(slot, "draining flag set, no SEND queued")

    def _adopt(self, slot: SocketSlot, why: str) -> None:
        self.shared.stats["tx_stranded"] += 1
        log.warning("app %d socket %d: tx ring stranded (%s, %d bytes): draining it", slot.app.id, slot.index, why,
                    slot.app.region.q[slot.control_word + C_TX_TAIL] - slot.tx_head)
        self.datapath.start_drain(slot)

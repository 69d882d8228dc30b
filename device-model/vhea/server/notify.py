"""Notifications to the guests: one call (eventfd) per touched ring per loop turn, held back while the port's
coalescing settings say so (coalesce.py), and tx rings released when their port's token bucket is out of debt
(pacing.py). A Server mixin (loop.py): `_touched` rings got frames this turn, `_deferred` calls are held
back, `_paced` tx rings wait for their rate limit.
"""

from __future__ import annotations

import logging
import time

from .port import PortRing

log = logging.getLogger(__package__)  # "vhea.server": one logger for the server package


class Notifications:
    """Call coalescing and pacing timers (mixed into Server)."""

    # the Server's state this mixin uses (set in loop.Server.__init__)
    _busy: set[PortRing]
    _touched: set[PortRing]
    _deferred: set[PortRing]
    _paced: set[PortRing]

    def _flush_calls(self) -> None:
        """One call per touched ring per loop turn, or later if the port's coalescing settings hold it back."""
        self._check_memory_guard()  # every loop turn passes here: a port whose memory was truncated closes
        touched, self._touched = self._touched, set()
        if self._deferred:
            touched |= self._deferred
            self._deferred = set()
        now = time.monotonic()
        for port, ring in touched:
            if ring.error is None and ring.mapped:
                if not port.coalescer.due(ring, now):
                    self._deferred.add((port, ring))
                    continue
                try:
                    ring.call()
                except Exception:
                    log.exception("call on ring %d", ring.index)

    def _notify_timeout(self, timeout: float) -> float:
        """`timeout`, or sooner when a held-back call or a paced tx ring is due."""
        if self._deferred:
            now = time.monotonic()
            for port, ring in self._deferred:
                d = port.coalescer.deadline(ring)
                if d is not None:
                    timeout = min(timeout, max(0.0, d - now))
        if self._paced:
            now = time.monotonic()
            for port, _ring in self._paced:
                timeout = min(timeout, max(0.0, port.pacer.ready_at() - now))
        return timeout

    def _release_paced(self) -> None:
        """Tx rings whose port's token bucket is out of debt get serviced again."""
        now = time.monotonic()
        for port, ring in [x for x in self._paced if x[0].pacer.ready_at() <= now]:
            self._paced.discard((port, ring))
            self._busy.add((port, ring))

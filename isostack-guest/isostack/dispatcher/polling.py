"""The polling policy: when the dispatcher spins, naps or sleeps, decided from what happened (pure: the clock is
injected, nothing else is touched, so it is unit-tested on its own).

* Spin: after work, the loop polls again without blocking for an adaptive window.  The window adapts like
  KVM's halt polling, up to --busy-poll-us: it grows while work comes back soon after a sleep (polling longer
  would have caught it) and shrinks when sleeps are long (polling would only have burnt the CPU, and with it a
  host core the peer may need).
* Nap: after a loop whose only work was draining tx rings that an application keeps filling, the dispatcher
  waits in epoll (kernel events and commands still wake it at once) so that the next drain takes many
  messages in one kernel send.  The nap doubles while a drain after a nap finds its ring under NAP_LOW full
  and halves when one finds it over NAP_HIGH full or an application waits (latency); within
  [NAP_MIN_S, --nap-max-us].
* Wait nap: when the only rings with work wait, for their readers (full rx rings) or for the kernel (EPOLLOUT),
  the dispatcher naps the same way, with a length of its own (an event ends such a nap and halves it; rx rings
  that stay full double it).
* Sleep: when nothing happened for the window, block in epoll until a kick or an event.
"""

from __future__ import annotations

import time
from collections.abc import Callable

NAP_LOW, NAP_HIGH = 1 / 8, 1 / 2
NAP_MIN_S = 20e-6


class PollingPolicy:
    """Spin/nap/sleep decisions and the adaptive poll window and nap length."""

    def __init__(self, busy_poll_us: int = 1000, nap_max_us: int = 1000, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.busy_poll_s = busy_poll_us / 1e6 if busy_poll_us >= 0 else None  # None: never sleep
        self.poll_window_s = self.busy_poll_s or 0.0
        self.adaptive = adaptive
        self.nap_max_s = max(nap_max_us, 0) / 1e6
        self.nap_s = min(NAP_MIN_S * 4, self.nap_max_s)
        self.wait_s = self.nap_s  # the wait nap's own length (waited)
        self.idle_since = clock()
        self._sleep_started = 0.0

    @property
    def poll_us(self) -> int:
        return round(self.poll_window_s * 1e6)

    @property
    def nap_us(self) -> int:
        return round(self.nap_s * 1e6)

    def worked(self) -> None:
        """A loop did work (or a nap ended): the poll window starts again now."""
        self.idle_since = self.clock()

    def should_nap(self, latency: bool, fill: float) -> bool:
        """After a loop with work: nap only if it drained streaming tx rings and nobody waits (latency)."""
        return bool(self.nap_max_s) and not latency and bool(fill)

    def napped(self, fill: float, latency: bool) -> None:
        """After a nap: lengthen it while the rings were far from full, shorten it when they were filling up
        or someone waited."""
        self.nap_s = self._adapted(self.nap_s, fill, latency)
        self.worked()

    def waited(self, fill: float, latency: bool) -> None:
        """After a wait nap (the rings with work wait for their readers or for the kernel): the same rule on its
        own length, so that waking on an event does not shorten the coalescing naps of the tx drains."""
        self.wait_s = self._adapted(self.wait_s, fill, latency)
        self.worked()

    def _adapted(self, nap_s: float, fill: float, latency: bool) -> float:
        if fill > NAP_HIGH or latency:
            return max(nap_s / 2, NAP_MIN_S)
        if fill < NAP_LOW:
            return min(nap_s * 2, self.nap_max_s)
        return nap_s

    def should_sleep(self) -> bool:
        """After a loop without work: sleep once the poll window passed without work."""
        return self.busy_poll_s is not None and self.clock() - self.idle_since >= self.poll_window_s

    def sleep_starts(self) -> None:
        self._sleep_started = self.clock()

    def slept(self) -> None:
        """After a sleep: adapt the window to how long it lasted (halt-polling style)."""
        self.idle_since = self.clock()
        if self.adaptive:
            self.adapt_window(self.idle_since - self._sleep_started)

    def adapt_window(self, slept: float) -> None:
        """Work that came back within --busy-poll-us of a sleep would have been caught by polling longer (grow
        the window); a longer sleep means polling would only have burnt the CPU (shrink)."""
        if slept < self.busy_poll_s:
            self.poll_window_s = min(max(self.poll_window_s * 2, NAP_MIN_S), self.busy_poll_s)
        else:
            self.poll_window_s /= 2
            if self.poll_window_s < NAP_MIN_S:
                self.poll_window_s = 0.0

    @staticmethod
    def sleep_timeout(*, commands_pending: bool, nap_s: float, tx_active: bool, polled_work: bool,
                      sleep_ms: int) -> float:
        """How long one epoll wait may block: not at all when commands are pending or tx rings are being
        drained, the nap, 1 ms while rx credits or a close linger are polled (they are not signalled), else
        the longest idle sleep."""
        if commands_pending:
            return 0.0
        if nap_s:
            return nap_s
        if tx_active:
            return 0.0
        if polled_work:
            return 0.001
        return sleep_ms / 1e3

"""Per-port line-rate pacing: a token bucket on what a guest transmits (models a 10 Gb/s link; off by default).

Applied where the server pulls frames from a guest's tx rings: while the bucket is empty the frames stay in
the ring (back-pressure, as a NIC whose tx queue is full) instead of being dropped, so TCP sees a slower
link, not loss. A pull takes up to a batch of frames before their sizes are known, so the bucket may go
into debt by one batch; the next pull waits until the debt is paid, and the average rate holds. The burst
(bucket depth) defaults to 1 ms at the configured rate, at least 64 KiB + a header (one TSO frame).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import ConfigError

LINE_RATE_BPS = 10_000_000_000
MIN_BURST = 65536 + 64


class Pacer:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate_bps = 0  # 0 = off
        self.burst = 0
        self.tokens = 0.0
        self.stamp = 0.0
        self.waits = 0  # pulls deferred because the bucket was empty

    def set(self, rate_bps: int, burst_bytes: int | None = None) -> None:
        if isinstance(rate_bps, bool) or not isinstance(rate_bps, int) or not 0 <= rate_bps <= 10**12:
            raise ConfigError(f"rate must be 0 (off) .. 10^12 bit/s, not {rate_bps!r}")
        if burst_bytes is not None and (isinstance(burst_bytes, bool) or not isinstance(burst_bytes, int)
                                        or not MIN_BURST <= burst_bytes <= 1 << 30):
            raise ConfigError(f"burst must be {MIN_BURST}..{1 << 30} bytes, not {burst_bytes!r}")
        self.rate_bps = rate_bps
        self.burst = burst_bytes if burst_bytes is not None else max(MIN_BURST, rate_bps // 8 // 1000)
        self.tokens = float(self.burst)
        self.stamp = self.clock()

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate_bps / 8)
        self.stamp = now

    def ready(self, now: float) -> bool:
        """May the port transmit now? (always, when off)"""
        if not self.rate_bps:
            return True
        self._refill(now)
        if self.tokens >= 0:
            return True
        self.waits += 1
        return False

    def consume(self, nbytes: int) -> None:
        if self.rate_bps:
            self.tokens -= nbytes

    def ready_at(self) -> float:
        """When the bucket is out of debt (valid after ready() said False)."""
        return self.stamp + max(0.0, -self.tokens) * 8 / self.rate_bps if self.rate_bps else 0.0

    def settings(self) -> dict:
        return {"rate_bps": self.rate_bps, "burst_bytes": self.burst, "waits": self.waits}

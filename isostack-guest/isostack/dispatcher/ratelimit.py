"""A per-application rate limit on isostackd's warnings: a hostile application that makes the dispatcher warn on
every command it posts must not flood the log (the disk, the journal, the loop's time spent formatting).  (vhea
has the same filter, keyed by port: the guest package imports nothing of the host side.)

A logging.Filter on the daemon's loggers, so the call sites stay plain `log.warning(...)`: a record at WARNING
or above whose format string starts with one of PEER_PREFIXES belongs to a peer (the record's first argument,
or a fixed name).  At most `burst` records per peer pass in `window_s`; the rest are dropped and counted, and
the next record of that peer to pass says how many were.  Pure bookkeeping with an injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

BURST = 10
WINDOW_S = 10.0
MAX_PEERS = 1024  # peers remembered; the idle ones are forgotten first


class PeerWarningLimit(logging.Filter):
    """Lets through at most `burst` warnings per peer in each `window_s`; counts the ones it drops."""

    def __init__(self, prefixes: dict[str, str | None], burst: int = BURST, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, on_suppressed: Callable[[], None] | None = None):
        """`prefixes`: format-string prefix -> the peer's fixed name, or None for "the record's first argument".
        `on_suppressed`: called for every record dropped (the daemon's own counter)."""
        super().__init__()
        self.prefixes = prefixes
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self.on_suppressed = on_suppressed
        self.peers: dict[object, list] = {}  # peer -> [window start, passed in it, dropped since one passed, dropped]
        self.total = 0

    def peer_of(self, record: logging.LogRecord) -> object | None:
        if record.levelno < logging.WARNING or not isinstance(record.msg, str):
            return None
        for prefix, name in self.prefixes.items():
            if record.msg.startswith(prefix):
                if name is not None:
                    return name
                return record.args[0] if isinstance(record.args, tuple) and record.args else None
        return None

    def suppressed(self, peer: object) -> int:
        """Warnings of this peer dropped so far (0 once it is forgotten)."""
        state = self.peers.get(peer)
        return state[3] if state else 0

    def filter(self, record: logging.LogRecord) -> bool:
        peer = self.peer_of(record)
        if peer is None:
            return True
        now = self.clock()
        state = self.peers.get(peer)
        if state is None:
            self._forget_some(now)
            state = self.peers[peer] = [now, 0, 0, 0]
        elif now - state[0] >= self.window_s:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            state[3] += 1
            self.total += 1
            if self.on_suppressed is not None:
                self.on_suppressed()
            return False
        state[1] += 1
        if state[2]:
            record.msg = f"{record.msg} (%d more warnings of this peer suppressed before this one)"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), state[2])
            state[2] = 0
        return True

    def _forget_some(self, now: float) -> None:
        """Keep at most MAX_PEERS: first forget peers whose window ended, then the oldest."""
        if len(self.peers) < MAX_PEERS:
            return
        for peer in [p for p, s in self.peers.items() if now - s[0] >= self.window_s]:
            del self.peers[peer]
        while len(self.peers) >= MAX_PEERS:
            del self.peers[min(self.peers, key=lambda p: self.peers[p][0])]


#: isostackd's warnings per application ("app %d ...") and about the attach socket (one peer for all)
PREFIXES = {"app %d": None, "attach refused": "attach socket", "accept on the attach socket": "attach socket"}

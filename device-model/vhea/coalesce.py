"""Per-queue interrupt coalescing: hold back a ring's call eventfd until max_frames frames have been
completed on it since the last call, or max_usecs have passed since the first held-back completion.

Off (0, 0) by default: the server then signals every touched ring once per loop turn, which already batches
a kick's worth of frames. A frame threshold needs a time threshold too, or a quiet ring would keep its last
frames from the guest forever. `saved` counts the loop turns in which a ring would have been signalled
without coalescing and was not (the calls saved; the guest's EVENT_IDX suppression comes on top).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

#: an upper bound that keeps a mistyped setting from silencing a queue for minutes
MAX_USECS = 1_000_000
MAX_FRAMES = 65536


@dataclass(slots=True)
class _Queue:
    max_frames: int = 0
    max_usecs: int = 0
    frames_at_call: int = 0
    first: float | None = None
    saved: int = 0


class Coalescer:
    def __init__(self, n_rings: int) -> None:
        self.queues = [_Queue() for _ in range(n_rings)]

    def set(self, max_frames: int, max_usecs: int, queue: int | None = None) -> None:
        """Set both thresholds of one queue (virtio ring index: 2i rx, 2i+1 tx of pair i) or of all."""
        for name, v, hi in (("max_frames", max_frames, MAX_FRAMES), ("max_usecs", max_usecs, MAX_USECS)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise ConfigError(f"{name} must be an integer 0..{hi}, not {v!r}")
        if max_frames and not max_usecs:
            raise ConfigError("a frame threshold needs max_usecs too (else a quiet queue would hold its frames)")
        if queue is not None and (isinstance(queue, bool) or not isinstance(queue, int)
                                  or not 0 <= queue < len(self.queues)):
            raise ConfigError(f"queue {queue!r} is not a ring of this port (0..{len(self.queues) - 1})")
        for q in self.queues if queue is None else [self.queues[queue]]:
            q.max_frames, q.max_usecs, q.first = max_frames, max_usecs, None

    def due(self, ring, now: float) -> bool:
        """Whether to signal `ring` now; False means held back (ask again by `deadline`)."""
        q = self.queues[ring.index]
        if not q.max_frames and not q.max_usecs:
            return True
        frames = ring.counters.frames
        if q.first is None:
            q.first = now
        if (q.max_frames and frames - q.frames_at_call >= q.max_frames) or (now - q.first) * 1e6 >= q.max_usecs:
            q.frames_at_call = frames
            q.first = None
            return True
        q.saved += 1
        return False

    def deadline(self, ring) -> float | None:
        q = self.queues[ring.index]
        return None if q.first is None else q.first + q.max_usecs / 1e6

    def settings(self) -> list[dict]:
        return [{"queue": i, "max_frames": q.max_frames, "max_usecs": q.max_usecs, "saved": q.saved}
                for i, q in enumerate(self.queues)]

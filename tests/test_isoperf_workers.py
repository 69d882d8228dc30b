"""isoperf.workers: the per-connection threads."""

from __future__ import annotations

import threading
import time

import isoperf.workers


def test_workers_are_joined_within_one_deadline_for_all():
    """Stuck workers share the timeout: the control exchange is not held for N times it."""
    release = threading.Event()
    workers = [threading.Thread(target=release.wait, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    t0 = time.monotonic()
    isoperf.workers.join_all(workers, 0.3)
    assert time.monotonic() - t0 < 0.9  # one by one with 0.3 s each would take 1.2 s
    assert all(w.is_alive() for w in workers)
    release.set()
    isoperf.workers.join_all(workers, 5)
    assert not any(w.is_alive() for w in workers)

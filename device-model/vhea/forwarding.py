"""The forwarding decisions of a tx batch, as pure code the server's loop drives: which runs of frames share one
switch decision, which ports a run goes to (or why it is dropped), and how a run splits by rx queue.

Nothing here touches a ring, a socket or a clock (the Switch has its own injected clock); the server does the
pulling, the copying and the counting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, NamedTuple, TypeVar

from .switch import Switch

R = TypeVar("R")


class Run(NamedTuple):
    """frames[start:end] of a tx batch; `single`: one frame with an offload request (forwarded by itself)."""

    start: int
    end: int
    single: bool


def mac_runs(frames: Sequence) -> Iterator[Run]:
    """Split a batch into runs of plain frames (bytes) with the same MAC addresses (their first 12 bytes), which
    one switch decision serves, and single frames of other types (offload requests: frame by frame)."""
    i, n = 0, len(frames)
    while i < n:
        f = frames[i]
        if type(f) is not bytes:
            yield Run(i, i + 1, True)
            i += 1
            continue
        key = f[:12]
        j = i + 1
        while j < n and type(frames[j]) is bytes and frames[j].startswith(key):
            j += 1
        yield Run(i, j, False)
        i = j


class Egress(NamedTuple):
    """Where a frame (or a run of frames with its addresses) goes: port names, or a drop reason and none."""

    ports: list[str]
    drop: str | None


def egress(switch: Switch, ingress: str, link_up: bool, frame: bytes) -> Egress:
    """The switch decision for a frame from port `ingress` (only its first 12 bytes are read); a port whose link
    is down sends nothing (and teaches the switch nothing)."""
    if not link_up:
        return Egress([], "link_down")
    dsts = switch.destinations(frame, ingress)
    if not dsts:
        return Egress([], "dst_is_ingress_port")
    return Egress(dsts, None)


def refusal(link_up: bool, connected: bool) -> str | None:
    """Why a port takes no frame now (the drop reason), or None when it takes them."""
    if not link_up:
        return "link_down"
    if not connected:
        return "not_connected"
    return None


class RingSegment(NamedTuple, Generic[R]):
    """frames[start:end] of a run go to rx `ring` (None: no ring is ready for them)."""

    ring: R | None
    start: int
    end: int


def ring_segments(ring_of: Callable[[int], R | None], start: int, end: int) -> Iterator[RingSegment[R]]:
    """Split frames[start:end] into segments of consecutive frames for the same rx ring (`ring_of(i)`: the ring
    of frame i, its classification), so each segment is written in one pass. Lazy: a caller that stops (its
    receiver paused) has classified only up to the first frame of the next segment."""
    cur = None
    seg = start
    for i in range(start, end):
        ring = ring_of(i)
        if ring is not cur:
            if i > seg:
                yield RingSegment(cur, seg, i)
            cur, seg = ring, i
    yield RingSegment(cur, seg, end)

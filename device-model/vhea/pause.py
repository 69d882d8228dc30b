"""Link-level flow control (IEEE 802.3x PAUSE) between switch ports, per port (`vhea serve --flow-control`,
`vhea pause on|off --port P`; off by default, as ethtool's `pause` parameters of a NIC).

Without it, a frame for a rx queue that has no buffers (a guest that did not repost them in time) is dropped
as rx_no_buffers; with GUEST_TSO one drop is up to 64 KiB, about 45 TCP segments, and the sender's TCP goes
into SACK recovery or a retransmission timeout. With flow control on at the receiving port, that frame and
the rest of its tx batch are held (copied, in order) and the tx queue they came from is not pulled any more:
its frames wait in the sending guest's ring, which fills, so the guest's qdisc stops the queue (TCP Small
Queues bounds what a socket has there) and nothing is lost. The held frames are retried every loop turn (the
receiver kicks its rx queue when it reposts buffers; the loop also polls every HOLD_POLL_S) and the tx queue
is pulled again once they are all delivered. Frames of the same tx queue never overtake a held one.

As on a paused Ethernet link, frames of the paused tx queue to other ports wait behind the held ones: a
whole tx queue stops, not a flow. At most one tx batch is held per tx queue (TX_BUDGET frames; the native
datapath's batch also stops at ARENA_BYTES).

An untrusted receiver must not stop a sender for long: a 802.3x PAUSE frame stops a 10 Gb/s link for at most
65535 quanta of 512 bit times (3.4 ms) and a switch stops honouring a port that keeps pausing (a "pause
storm" watchdog). Here a paused tx queue waits at most the receiving port's pause_max_us (DEFAULT_MAX_US)
after its frames were held; then the frames still held for the receiver are dropped as rx_pause_timeout, the
rest go on, and the receiver's rx queue is "stalled": frames for it that find no buffers are dropped at once
(also rx_pause_timeout) instead of pausing anyone again, until it has buffers again (it kicks, or a frame
goes in). Frames the destination cannot take for other reasons (link down, not connected, buffer too small)
are dropped as before. A GSO frame that is segmented for a port without GUEST_TSO and runs out of buffers
half-way is dropped as rx_no_buffers (its first segments are already in the guest).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .errors import ConfigError
from .net import ArenaTxFrame
from .vring import RingError

#: how long a tx queue may stay paused by an rx queue that takes no frame (about one maximal PAUSE frame at
#: 10 Gb/s, 3.4 ms, with some slack for a guest's NAPI poll)
DEFAULT_MAX_US = 5000
MAX_MAX_US = 1_000_000
#: while frames are held the loop retries them at least this often, even without a kick
HOLD_POLL_S = 0.001


def check_max_us(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_US:
        raise ConfigError(f"pause max_us must be an integer 1..{MAX_MAX_US} (microseconds), not {value!r}")
    return value


def detach(frame: bytes) -> bytes:
    """A frame that stays valid after its tx batch: a TSO frame still in the native datapath's arena is copied
    out whole (every other frame already owns its bytes)."""
    return frame.full() if type(frame) is ArenaTxFrame else frame


class Ring(Protocol):
    """What flow control reads of a ring (vring.Vring satisfies it)."""

    index: int

    @property
    def ready(self) -> bool: ...

    def pending(self, fence: bool = False) -> int: ...


class Sender(Protocol):
    """The port a paused tx queue belongs to (server.Port satisfies it)."""

    name: str
    tx_pauses: int
    tx_paused_s: float

    def drop(self, reason: str, n: int = 1, queue: int | None = None) -> None: ...


class Receiver(Protocol):
    """A receiving port's flow control settings and counters (server.Port satisfies it)."""

    name: str
    pause: bool
    pause_max_us: int
    pause_events: int
    pause_timeouts: int
    stalled: set[int]


def holds(port: Receiver, queue: int) -> bool:
    """Whether a frame for `port`'s rx `queue` that finds no buffers is held (its sender paused), not dropped:
    flow control is on and the queue has not hit the pause limit."""
    return port.pause and queue not in port.stalled


def no_buffers_reason(port: Receiver, queue: int) -> str:
    """The drop reason of a frame that found no buffers and is not held."""
    return "rx_pause_timeout" if queue in port.stalled else "rx_no_buffers"


@dataclass(eq=False)
class Backlog:
    """The held frames of one paused tx queue (`port`'s `ring`), in the order they were sent, each with the
    name of the port it goes to (a flooded frame once per port)."""

    port: Sender
    ring: Ring
    start: float  # when the tx queue was paused (its frames were held)
    entries: deque[tuple[str, bytes]] = field(default_factory=deque)
    deadline: float = 0.0  # start + the pause limit of the port the first entry waits for
    #: (port, rx ring) where the first entry found no buffers: retried only when that ring has some again
    blocked: tuple[Receiver, Ring] | None = None

    def add(self, dst: str, frame: bytes) -> None:
        self.entries.append((dst, detach(frame)))


class PauseTimeout(NamedTuple):
    """A receiver's rx queue kept a tx queue paused up to its pause limit (the server logs it)."""

    port: Receiver
    queue: int
    waited_us: int
    count: int  # the receiver's pause_timeouts with this one


class Drained(NamedTuple):
    """What one drain turn did: the Backlogs emptied (their tx queues may be serviced again) and the pause limits
    reached."""

    resumed: list[Backlog]
    timeouts: list[PauseTimeout]


class HeldSummary(NamedTuple):
    """Frames held per receiving port, and the Backlogs of the paused tx queues per sending port."""

    frames: dict[str, int]
    paused: dict[str, list[Backlog]]


class FlowControl:
    """The paused tx queues and their held frames. Pure decisions: the caller passes the time and the functions
    that deliver a frame and find a port, so this module touches no socket, fd or clock."""

    def __init__(self) -> None:
        self.held: dict[tuple[Sender, Ring], Backlog] = {}  # tx queues paused by a receiver: their frames

    def __bool__(self) -> bool:
        return bool(self.held)

    def paused(self, port: Sender, ring: Ring) -> bool:
        return (port, ring) in self.held

    def begin(self, src: Sender, tx: Ring, receiver: Receiver, rx: Ring, now: float) -> Backlog:
        """`receiver`'s rx ring `rx` has no buffers for a frame that `src`'s tx ring `tx` sent, and `receiver`
        pauses its senders: the tx queue is paused and the rest of its batch goes into the Backlog returned."""
        bl = Backlog(src, tx, now, deadline=now + receiver.pause_max_us / 1e6, blocked=(receiver, rx))
        self.held[(src, tx)] = bl
        receiver.pause_events += 1
        src.tx_pauses += 1
        return bl

    def drain(self, now: float, push: Callable[[Receiver, bytes], Ring | None],
              lookup: Callable[[str], Receiver | None]) -> Drained:
        """Deliver what the receivers take now, in order per tx queue; drop what waited past the receiver's
        pause limit; a tx queue is resumed when its frames are gone. `push(port, frame)` delivers one frame and
        returns the rx ring when it found no buffers (the frame is still to be held), else None; `lookup(name)`
        is the port of that name or None when it was removed."""
        resumed: list[Backlog] = []
        timeouts: list[PauseTimeout] = []
        for key, bl in list(self.held.items()):
            entries = bl.entries
            while entries:
                if bl.blocked is not None:  # still no buffers where the first frame waits: nothing to do yet
                    port, ring = bl.blocked
                    if now < bl.deadline and holds(port, ring.index) and ring.ready:
                        try:
                            if not ring.pending():
                                break
                        except RingError:
                            pass  # push meets it and stops the ring
                    bl.blocked = None
                name, frame = entries[0]
                port = lookup(name)
                if port is None:  # removed while its frames were held
                    bl.port.drop("dst_removed")
                    entries.popleft()
                    continue
                ring = push(port, frame)
                if ring is None:  # delivered (or dropped for another reason)
                    entries.popleft()
                    continue
                bl.blocked = (port, ring)
                bl.deadline = bl.start + port.pause_max_us / 1e6
                if now < bl.deadline:
                    break
                # the limit: this frame and every later one for this queue without buffers are dropped
                bl.blocked = None
                port.pause_timeouts += 1
                port.stalled.add(ring.index)
                timeouts.append(PauseTimeout(port, ring.index, round((now - bl.start) * 1e6), port.pause_timeouts))
            if not entries:
                del self.held[key]
                bl.port.tx_paused_s += now - bl.start
                resumed.append(bl)
        return Drained(resumed, timeouts)

    def next_deadline(self) -> float:
        """The earliest pause limit of the held frames (call only while some are held)."""
        return min(b.deadline for b in self.held.values())

    def summary(self) -> HeldSummary:
        """What is held now, for stats (list(): safe against the loop thread, tests ask from another)."""
        held: dict[str, int] = {}
        paused: dict[str, list[Backlog]] = {}
        for bl in list(self.held.values()):
            paused.setdefault(bl.port.name, []).append(bl)
            for name, _f in list(bl.entries):
                held[name] = held.get(name, 0) + 1
        return HeldSummary(held, paused)

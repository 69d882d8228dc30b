"""A switch port: its socket and front-end connection (or its TAP device: a tap port), link state, the host's
settings that outlive connections (classifier, coalescing, pacing, flow control) and its counters."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ..classifier import PortClassifier
from ..coalesce import Coalescer
from ..connection import Connection
from ..handler import BackendHandler
from ..pacing import Pacer
from ..pause import DEFAULT_MAX_US
from ..ratelimit import PORT_WARNINGS
from ..tap import TapDevice
from ..vring import QueueCounters, Vring

#: a ring of a port: what the loop's work sets (rings to service, to call, paced) hold
PortRing = tuple["Port", Vring]


@dataclass(eq=False)
class Port:
    name: str
    path: str
    queue_pairs: int
    listener: socket.socket | None = None
    #: client role: vhea connects to a socket the front-end listens on (QEMU server=on) and reconnects
    client: bool = False
    next_connect: float = 0.0
    connect_attempts: int = 0
    conn: Connection | None = None
    #: a tap port: the TAP device IFNAME (ifname set, device open while the port exists) instead of a vhost-user
    #: front-end; one queue, no classifier or coalescing
    ifname: str | None = None
    tap: TapDevice | None = None
    handler: BackendHandler | None = None
    from_guest_frames: int = 0
    from_guest_bytes: int = 0
    to_guest_frames: int = 0
    to_guest_bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    queue_counters: list[QueueCounters] = field(default_factory=list)
    kick_fds: dict[int, Vring] = field(default_factory=dict)
    classifier: PortClassifier = field(init=False)
    coalescer: Coalescer = field(init=False)
    link_up: bool = True
    #: link down the old way (`vhea link down --emulate`): the connection stays, frames are dropped as link_down
    #: and the guest still sees carrier (for front-ends that cannot reconnect, e.g. DPDK's vhost PMD)
    link_emulated: bool = False
    link_changes: int = 0
    #: front-end connections closed unserved because the link was down (QEMU retries every second)
    refused_link_down: int = 0
    pacer: Pacer = field(default_factory=Pacer)
    queue_drops: dict[int, dict[str, int]] = field(default_factory=dict)
    #: 802.3x flow control as the receiver (`vhea pause`, pause.py): frames for a rx queue without buffers are
    #: held and their tx queue paused, for at most pause_max_us
    pause: bool = False
    pause_max_us: int = DEFAULT_MAX_US
    #: times a rx queue of this port had no buffers for a frame and paused its sender
    pause_events: int = 0
    #: times the pause limit was reached (the frames held for this port then dropped as rx_pause_timeout)
    pause_timeouts: int = 0
    #: rx queues that hit the pause limit: frames for them without buffers are dropped until they have buffers
    stalled: set[int] = field(default_factory=set)
    #: times a tx queue of this port was paused by a receiver, and for how long in all (seconds)
    tx_pauses: int = 0
    tx_paused_s: float = 0.0
    #: front-end connections closed by vhea, by reason (protocol error, replies not read, ...)
    closed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue_counters = [QueueCounters() for _ in range(2 * self.queue_pairs)]
        self.classifier = PortClassifier(self.queue_pairs)  # the host's settings: they outlive connections
        self.coalescer = Coalescer(2 * self.queue_pairs)

    def drop(self, reason: str, n: int = 1, queue: int | None = None) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n
        if queue is not None:  # also by queue (rx drops: which queue ran out of buffers)
            qd = self.queue_drops.setdefault(queue, {})
            qd[reason] = qd.get(reason, 0) + n

    @property
    def serves(self) -> bool:
        """Whether a front-end connection is served now: not while the link is down (unless emulated)."""
        return self.link_up or self.link_emulated

    @property
    def kind(self) -> str:
        return "vhost-user" if self.ifname is None else "tap"

    def connection_state(self) -> str:
        if self.ifname is not None:
            return "tap open" if self.tap is not None else "tap closed"
        if self.conn is not None:
            return "connected"
        if not self.serves:
            return "closed: link down"
        return "connecting" if self.client else "listening"

    def stats(self, held_frames: int = 0, tx_paused: list | tuple = (), now: float = 0.0) -> dict:
        """`held_frames`: frames held for this port now; `tx_paused`: the Backlogs of its tx queues paused now."""
        out = {
            "kind": self.kind,
            "connected": self.conn is not None or self.tap is not None,
            "connection": self.connection_state(),
            "from_guest_frames": self.from_guest_frames,
            "from_guest_bytes": self.from_guest_bytes,
            "to_guest_frames": self.to_guest_frames,
            "to_guest_bytes": self.to_guest_bytes,
            "drops": dict(sorted(self.drops.items())),
            "classifier": self.classifier.stats(),
            "link": "up" if self.link_up else "down",
            "link_emulated": self.link_emulated,
            "link_changes": self.link_changes,
            "refused_link_down": self.refused_link_down,
            "warnings_suppressed": PORT_WARNINGS.suppressed(self.name),
            "closed": dict(sorted(self.closed.items())),
            "coalesce": self.coalescer.settings(),
            "pacing": self.pacer.settings(),
            "pause": {"on": self.pause, "max_us": self.pause_max_us, "events": self.pause_events,
                      "timeouts": self.pause_timeouts, "stalled_queues": sorted(self.stalled),
                      "held_frames": held_frames, "tx_pauses": self.tx_pauses,
                      "tx_queues_paused": sorted(b.ring.index for b in tx_paused),
                      "tx_paused_us": round(1e6 * (self.tx_paused_s + sum(now - b.start for b in tx_paused)))},
            "queues": [
                {"index": i, "frames": c.frames, "bytes": c.bytes, "kicks": c.kicks, "calls": c.calls,
                 "calls_skipped": c.calls_skipped,
                 "drops": dict(sorted(self.queue_drops.get(i, {}).items()))}
                for i, c in enumerate(self.queue_counters)
            ],
        }
        if self.ifname is not None:
            out["ifname"] = self.ifname
        return out

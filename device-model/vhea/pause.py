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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ConfigError
from .net import ArenaTxFrame

if TYPE_CHECKING:
    from .server import Port
    from .vring import Vring

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


@dataclass(eq=False)
class Backlog:
    """The held frames of one paused tx queue (`port`'s `ring`), in the order they were sent, each with the
    name of the port it goes to (a flooded frame once per port)."""

    port: Port
    ring: Vring
    start: float  # when the tx queue was paused (its frames were held)
    entries: deque[tuple[str, bytes]] = field(default_factory=deque)
    deadline: float = 0.0  # start + the pause limit of the port the first entry waits for
    #: (port, rx ring) where the first entry found no buffers: retried only when that ring has some again
    blocked: tuple[Port, Vring] | None = None

    def add(self, dst: str, frame: bytes) -> None:
        self.entries.append((dst, detach(frame)))

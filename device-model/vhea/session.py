"""The state of one vhost-user session as the request handler sees it, kept in one place.

The handler decides from it (REPLY_ACK, the order of requests, whether a kick enables a ring) without asking
the device; the device keeps its own rings and memory for the datapath, changed only through the handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RingSession:
    """One vring as configured by the front-end."""

    num: int = 0  # 0: no SET_VRING_NUM yet
    started: bool = False  # a kick fd (or NOFD) came, and no GET_VRING_BASE stopped it since
    enabled: bool = False


@dataclass(slots=True)
class SessionState:
    owner: bool = False
    acked_features: int = 0
    protocol_features: int = 0
    memory_table: bool = False  # a SET_MEM_TABLE was mapped
    rings: list[RingSession] = field(default_factory=list)

    @classmethod
    def new(cls, vring_count: int) -> SessionState:
        return cls(rings=[RingSession() for _ in range(vring_count)])

    def end(self) -> None:
        """The device was reset: no memory, rings as new; owner and negotiated features stay (RESET_OWNER clears
        those itself)."""
        self.memory_table = False
        self.rings = [RingSession() for _ in self.rings]

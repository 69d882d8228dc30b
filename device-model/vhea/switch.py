"""A learning Ethernet switch between ports: MAC learning with ageing, flooding, no hairpin.

Pure logic: it decides where a frame goes; the server does the delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_AGEING_S = 300.0
#: at most this many learned MACs: a guest spraying source MACs cannot grow the table (and vhea's memory);
#: when full, new sources are not learned (their frames still flood) and `not_learned` counts them
MAX_FDB_ENTRIES = 4096


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(slots=True)
class FdbEntry:
    port: str
    seen: float


class Switch:
    def __init__(self, ports: list[str], ageing: float = DEFAULT_AGEING_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ports = list(ports)
        self.ageing = ageing
        self.clock = clock
        self.fdb: dict[bytes, FdbEntry] = {}
        self.max_entries = MAX_FDB_ENTRIES
        #: sources not learned because the table was full
        self.not_learned = 0

    def learn(self, src: bytes, port: str, now: float) -> None:
        if src[0] & 1:
            return  # a multicast source address is bogus; never learn it
        e = self.fdb.get(src)
        if e is None:
            if len(self.fdb) >= self.max_entries:
                self.not_learned += 1
                return
            self.fdb[src] = FdbEntry(port, now)
        else:
            e.port = port
            e.seen = now

    def destinations(self, frame: bytes, ingress: str) -> list[str]:
        """Learn the source and return the egress ports (never the ingress port). Per frame: kept lean."""
        now = self.clock()
        fdb = self.fdb
        src = frame[6:12]
        if not frame[6] & 1:  # a multicast source address is bogus; never learn it
            e = fdb.get(src)
            if e is None:
                if len(fdb) < self.max_entries:
                    fdb[src] = FdbEntry(ingress, now)
                else:
                    self.not_learned += 1
            else:
                e.port = ingress
                e.seen = now
        if not frame[0] & 1:
            dst = frame[0:6]
            e = fdb.get(dst)
            if e is not None:
                if now - e.seen <= self.ageing:
                    return [] if e.port == ingress else [e.port]
                del fdb[dst]
        return [p for p in self.ports if p != ingress]

    def forget_port(self, port: str) -> None:
        """Flush the entries of a port whose guest went away."""
        for mac in [m for m, e in self.fdb.items() if e.port == port]:
            del self.fdb[mac]

    def expire(self) -> None:
        now = self.clock()
        for mac in [m for m, e in self.fdb.items() if now - e.seen > self.ageing]:
            del self.fdb[mac]

    def table(self) -> list[dict[str, str]]:
        self.expire()
        return [{"mac": mac_str(m), "port": e.port} for m, e in sorted(self.fdb.items())]

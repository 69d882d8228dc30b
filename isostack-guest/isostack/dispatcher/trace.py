"""An opt-in timestamp trace of the hops a message takes through isostackd, to find where an RR transaction's
microseconds go (`python -m isoperf.stackbench --rr-trace` reads it and prints the per-hop table).

ISOSTACKD_TRACE=PATH turns it on: each hop appends (CLOCK_MONOTONIC ns, event, socket slot) to an array in
memory, at most MAX_RECORDS, written to PATH (int64 triples) when isostackd stops. CLOCK_MONOTONIC is the
same clock in every process of the machine, so an application's own timestamps line up with these. Off (the
default) the loop pays one `is not None` test per hop.
"""

from __future__ import annotations

import os
import time
from array import array

ENV = "ISOSTACKD_TRACE"
MAX_RECORDS = 1 << 21

# events
KERNEL_EVENT = 1  # epoll returned an event for the slot's kernel socket
COMMAND = 2  # a command taken from the slot's queue
TX_SEEN = 3  # a drain that found bytes in the tx ring started (recorded with TX_SENT, just before it)
TX_SENT = 4  # the kernel send of that drain returned
RX_FILLED = 5  # a kernel receive put bytes into the rx ring
NOTIFIED = 6  # a notification was posted for the slot
DOORBELL = 7  # a doorbell was rung (slot: the notification ring)
NAMES = {KERNEL_EVENT: "kernel_event", COMMAND: "command", TX_SEEN: "tx_seen", TX_SENT: "tx_sent",
         RX_FILLED: "rx_filled", NOTIFIED: "notified", DOORBELL: "doorbell"}


class Trace:
    """The records of one isostackd run."""

    clock = staticmethod(time.monotonic_ns)

    def __init__(self, path: str, max_records: int = MAX_RECORDS):
        self.path = path
        self.records = array("q")
        self.limit = 3 * max_records

    def __call__(self, event: int, slot: int, at: int = 0) -> None:
        records = self.records
        if len(records) < self.limit:
            records.extend((at or time.monotonic_ns(), event, slot))

    def dump(self) -> None:
        with open(self.path, "wb") as f:
            self.records.tofile(f)


def from_env() -> Trace | None:
    path = os.environ.get(ENV)
    return Trace(path) if path else None


def read(path: str) -> list[tuple[int, int, int]]:
    """The (ns, event, slot) records a trace file holds."""
    records = array("q")
    with open(path, "rb") as f:
        records.frombytes(f.read())
    return [tuple(records[i : i + 3]) for i in range(0, len(records) - 2, 3)]

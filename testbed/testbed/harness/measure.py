"""What a case measures around the client's run, besides isoperf's own figures: the device-model counters
(did the data cross the switch?), both guests' TCP counters and their NIC layout.

Each reading that fails is recorded as why, not raised: a case still has its isoperf result without them.
The TCP counters' change is `tcp` {"client": ..., "server": ...} in the record, and the client's
retransmission share is a column of the IsoStack vs legacy table (a case spent in loss recovery shows).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from testbed.harness import dmstats, placement_cmd, tcpstats
from testbed.harness.remote import Shell

StatsReader = Callable[[], dict]


class DeviceModelCounters:
    """The device model's per-port counters, read before and after the client; warns once when unreadable and
    remembers why, so every record can say it."""

    def __init__(self, reader: StatsReader | None, console: Console):
        self.reader = reader
        self.console = console
        self.error = "no device-model counters reader"
        self._warned = False

    def read(self) -> dict | None:
        if self.reader is None:
            return None
        try:
            return self.reader()
        except dmstats.StatsError as e:
            self.error = str(e)
            if not self._warned:
                self.console.log(f"[yellow]device-model counters unavailable: {e}[/yellow]")
                self._warned = True
            return None

    def record(self, before: dict | None, after: dict | None, client_port: str, server_port: str,
               result: dict) -> dict:
        """The record's `device_model`: per-port deltas and whether each sender's payload crossed its port."""
        out = device_model_record(before, after, client_port, server_port, result)
        if out["error"] == "counters unavailable":
            out["error"] = f"counters unavailable: {self.error}"
        return out


def device_model_record(
    before: dict | None, after: dict | None, client_port: str, server_port: str, result: dict
) -> dict:
    out = {"client_port": client_port, "server_port": server_port, "delta": None, "crossed": None, "error": None}
    if before is None or after is None:
        out["error"] = "counters unavailable"
        return out
    try:
        delta = dmstats.stats_delta(before, after)
    except dmstats.StatsError as e:
        out["error"] = str(e)
        return out
    out["delta"] = {name: d.to_dict() for name, d in delta.items()}
    out["crossed"] = all(
        dmstats.crossed_device_model(delta, port, payload)
        for port, payload in payload_by_sender(result, client_port, server_port).items()
    )
    return out


def payload_by_sender(result: dict, client_port: str, server_port: str) -> dict[str, int]:
    """Payload bytes (warm-up included) each guest's port must have taken in: the sender's side of each test.

    stream: the client sends; maerts: the server sends; rr/crr: requests from the client, responses from the
    server (counted from the transactions, which is what both sides agree on).
    """
    total = result.get("server_total_bytes") or result.get("bytes") or 0
    test = result.get("test", "stream")
    if test == "maerts":
        return {server_port: total}
    if test in ("rr", "crr"):
        size, rsize = int(result.get("size") or 0), int(result.get("response_size") or result.get("size") or 0)
        transactions = total // (size + rsize) if size + rsize else 0
        return {client_port: transactions * size, server_port: transactions * rsize}
    return {client_port: total}


def tcp_counters(shell: Shell) -> dict | str:
    """The guest's TCP counters, or why they could not be read (the case goes on without them)."""
    r = shell.run(tcpstats.COMMAND)
    if r.exit_code != 0:
        return f"{tcpstats.COMMAND} exited {r.exit_code}"
    try:
        return tcpstats.parse(r.stdout)
    except tcpstats.TcpStatsError as e:
        return str(e)


def tcp_change(shell: Shell, before: dict | str) -> dict:
    """Read the counters again: their change since `before`, or {"error": why} if either reading failed."""
    after = tcp_counters(shell)
    if isinstance(before, str) or isinstance(after, str):
        return {"error": before if isinstance(before, str) else after}
    return tcpstats.delta(before, after)


def nic_layout(shell: Shell) -> dict:
    """The guest's queue IRQ affinities, RPS/XPS masks and interrupt counts (placement_cmd.parse_snapshot)."""
    return placement_cmd.parse_snapshot(shell.run(placement_cmd.snapshot_command()).stdout)

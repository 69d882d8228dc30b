"""Proof that an IsoStack end of a case went through isostackd: its instances' final counters against the bytes
the program reported.

A program under isostack-run that cannot attach fails with ENETDOWN, but one that silently used the kernel's
sockets (a static binary, a preload lost on the way, a Python front-end falling back) would still report
figures, and they would be the legacy stack's under an iso label. So each iso end's isostackd must show at
least MIN_SHARE of the program's measured bytes sent or received (its counters also hold the warm-up, so they
are at least the bytes measured when the traffic went through it), and an attached application; else the case
fails saying so.
"""

from __future__ import annotations

from testbed.harness.errors import HarnessError

MIN_SHARE = 0.5  # generous: a byte count that is off by half is not a rounding matter


def summary(records: list[dict] | None) -> dict | None:
    """The instances' counters added up: bytes sent and received through isostackd, applications attached;
    None when some instance has no final stats line."""
    if not records:
        return None
    total = {"send_bytes": 0, "recv_bytes": 0, "apps_attached": 0}
    for rec in records:
        stats = rec.get("stats")
        if not isinstance(stats, dict):
            return None
        for key in total:
            value = stats.get(key)
            total[key] += value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
    return total


def check(end: str, guest: str, records: list[dict] | None, program: str, measured_bytes: int) -> dict:
    """The end's summary, or a HarnessError when isostackd did not carry the program's traffic."""
    total = summary(records)
    if total is None:
        raise HarnessError(f"{end} on {guest} claims IsoStack but isostackd's final counters are missing (no"
                           " 'stats:' line in its log): the bytes cannot be shown to have gone through it")
    moved = total["send_bytes"] + total["recv_bytes"]
    if total["apps_attached"] < 1 or moved < MIN_SHARE * measured_bytes or moved == 0:
        raise HarnessError(f"{end} on {guest} claims IsoStack but isostackd carried {moved} bytes"
                           f" ({total['apps_attached']} applications attached) while {program} reported"
                           f" {measured_bytes}: the traffic did not go through IsoStack")
    return {**total, "program_bytes": measured_bytes, "carried": True}

"""Suspect marks: what in a case's record says its figure may not be the stack's own.

Why: on a 2-core host running two TCG guests, a figure can come from TCP loss recovery, from a stalled
receiver that stretched the run, from isostackd's safety net or from other load on the host; the table must
say so next to the number instead of leaving it to whoever reads the JSON. Pure: records in, marks out.
"""

from __future__ import annotations

OVERRUN = 0.10  # measured interval longer than asked by more than this share
LOAD_MOVED_PER_CPU = 0.5  # 1-minute load average change over a case, per host CPU, that counts as "moved"
DEFAULT_CPUS = 2  # runs stored before host_cpu_count was read

# mark -> what it means (the report's legend), in the order the marks are shown
LEGEND = {
    "overrun": f"the measured interval ran over the asked duration by more than {OVERRUN:.0%}",
    "RTO": "TCP retransmission timeouts on a guest during the run",
    "stranded": "isostackd found stranded tx rings and drained them",
    "failed": "a repeat of the case failed",
    "load": f"the host's 1-minute load average moved by more than {LOAD_MOVED_PER_CPU} per host CPU over the case",
}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def overran(case: dict) -> bool:
    """isoperf's measured interval (all intervals together) exceeds duration × intervals by more than OVERRUN."""
    measured = (case.get("isoperf") or {}).get("duration")
    asked, intervals = case.get("duration"), case.get("intervals") or 1
    if not (_number(measured) and _number(asked) and _number(intervals)) or asked <= 0:
        return False
    return measured > asked * intervals * (1 + OVERRUN)


def rto_timeouts(case: dict) -> int:
    """RTO timeouts over the run, both guests together (0 where the counters were not read)."""
    tcp = case.get("tcp") or {}
    return sum(side.get("rto_timeouts") or 0 for side in tcp.values()
               if isinstance(side, dict) and _number(side.get("rto_timeouts")))


def stranded(case: dict) -> int:
    """Stranded tx rings isostackd drained, over its instances."""
    total = 0
    for inst in case.get("isostackd") or []:
        st = inst.get("stats") if isinstance(inst, dict) else None
        n = st.get("tx_stranded") if isinstance(st, dict) else None
        total += n if isinstance(n, int) and n > 0 else 0
    return total


def load_moved(case: dict, cpus: int | None) -> bool:
    """The 1-minute load average changed by more than LOAD_MOVED_PER_CPU per host CPU between the case's ends."""
    load = case.get("host_load") or {}
    before, after = (load.get("before") or {}).get("1m"), (load.get("after") or {}).get("1m")
    if not (_number(before) and _number(after)):
        return False
    return abs(after - before) > LOAD_MOVED_PER_CPU * (cpus or DEFAULT_CPUS)


def case_marks(case: dict, cpus: int | None = None) -> list[str]:
    """The marks of one record (one repeat), in LEGEND order; "failed" is left to its status."""
    found = {
        "overrun": overran(case),
        "RTO": rto_timeouts(case) > 0,
        "stranded": stranded(case) > 0,
        "failed": False,
        "load": load_moved(case, cpus),
    }
    return [mark for mark in LEGEND if found[mark]]


def group_marks(cases: list[dict], cpus: int | None = None) -> list[str]:
    """The marks of a case over its repeats: any repeat's marks, and "failed" if a repeat failed."""
    found = {mark for case in cases for mark in case_marks(case, cpus)}
    if any(case.get("status") != "ok" for case in cases):
        found.add("failed")
    return [mark for mark in LEGEND if mark in found]


def legend(marks: set[str] | list[str]) -> list[str]:
    """"mark: meaning" for the marks that occur, in LEGEND order."""
    return [f"{mark}: {text}" for mark, text in LEGEND.items() if mark in marks]

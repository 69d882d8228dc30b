"""A guest's TCP counters (/proc/net/snmp and /proc/net/netstat, what `nstat` reads) and their change over one
test.

Why: on this testbed a case can be dominated by TCP loss recovery instead of by the stack under test (a TCG
receiver that reposts rx buffers too late loses whole 64 KiB frames; the sender then spends the run in SACK
recovery and RTO back-off). Retransmitted segments and RTO timeouts next to each figure say which cases were.
"""

from __future__ import annotations

COMMAND = "cat /proc/net/snmp /proc/net/netstat"

# record key -> (table, counter) in /proc/net/snmp ("Tcp") or /proc/net/netstat ("TcpExt")
COUNTERS = {
    "out_segs": ("Tcp", "OutSegs"),
    "retrans_segs": ("Tcp", "RetransSegs"),
    "rto_timeouts": ("TcpExt", "TCPTimeouts"),
    "spurious_rtos": ("TcpExt", "TCPSpuriousRTOs"),
    "fast_retrans": ("TcpExt", "TCPFastRetrans"),
}


class TcpStatsError(ValueError):
    """Text that is not the kernel's snmp/netstat tables."""


def parse(text: str) -> dict[str, int]:
    """{record key: value} from the concatenated files: each table is a header line ("Tcp: name name ...")
    followed by a value line with the same prefix."""
    tables: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for head, values in zip(lines, lines[1:], strict=False):
        prefix, _, names = head.partition(":")
        vprefix, _, nums = values.partition(":")
        if prefix != vprefix or not names.strip() or prefix in tables:
            continue
        names_l, nums_l = names.split(), nums.split()
        if len(names_l) != len(nums_l) or not all(n.lstrip("-").isdigit() for n in nums_l):
            continue  # a header followed by the next header, or garbage
        tables[prefix] = dict(zip(names_l, map(int, nums_l), strict=True))
    out = {}
    for key, (table, name) in COUNTERS.items():
        if name not in tables.get(table, {}):
            raise TcpStatsError(f"{table} {name} missing from the guest's /proc/net/snmp and /proc/net/netstat")
        out[key] = tables[table][name]
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict:
    """What changed over the test, plus retrans_pct (retransmitted / sent segments, %; None when none were
    sent)."""
    d = {k: after[k] - before[k] for k in COUNTERS}
    d["retrans_pct"] = round(100 * d["retrans_segs"] / d["out_segs"], 3) if d["out_segs"] > 0 else None
    return d

"""The guests' TCP counters around a case (tcpstats): parsing the kernel's tables and their change."""

from __future__ import annotations

import pytest

from testbed.harness import tcpstats

# The shape of a 6.1 guest's /proc/net/snmp + /proc/net/netstat (columns trimmed; the order is the kernel's).
SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 {ip}
Tcp: RtoAlgorithm RtoMin ActiveOpens InSegs OutSegs RetransSegs InErrs
Tcp: 1 200 -1 500 {out} {retrans} 0
Udp: InDatagrams NoPorts
Udp: 0 0
TcpExt: SyncookiesSent DelayedACKs TCPTimeouts TCPSpuriousRTOs TCPFastRetrans TCPLossProbes
TcpExt: 0 12 {rto} {spurious} {fast} 3
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
"""


def _text(out=1000, retrans=10, rto=1, spurious=0, fast=9, ip=5):
    return SNMP.format(out=out, retrans=retrans, rto=rto, spurious=spurious, fast=fast, ip=ip)


def test_parse_picks_the_counters_from_both_tables():
    assert tcpstats.parse(_text()) == {"out_segs": 1000, "retrans_segs": 10, "rto_timeouts": 1,
                                       "spurious_rtos": 0, "fast_retrans": 9}


def test_delta_and_retransmitted_share():
    before = tcpstats.parse(_text())
    after = tcpstats.parse(_text(out=21000, retrans=510, rto=4, spurious=1, fast=400))
    assert tcpstats.delta(before, after) == {"out_segs": 20000, "retrans_segs": 500, "rto_timeouts": 3,
                                             "spurious_rtos": 1, "fast_retrans": 391, "retrans_pct": 2.5}
    assert tcpstats.delta(before, before)["retrans_pct"] is None  # nothing sent: no share


@pytest.mark.parametrize("text", [
    "",
    "Tcp: OutSegs RetransSegs\n",  # a header without values
    _text().replace("TcpExt: 0 12", "TcpExt: 0 x"),  # a value that is not a number: the table is ignored
    _text().replace("RetransSegs", "Retrans"),
    "garbage\nwith: lines\n",
])
def test_unreadable_tables_are_an_error_naming_the_counter(text):
    with pytest.raises(tcpstats.TcpStatsError, match="missing from the guest's"):
        tcpstats.parse(text)

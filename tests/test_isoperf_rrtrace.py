"""isoperf.rrtrace: matching a transaction's hops in isostackd's trace (sans-I/O, on made-up timestamps)."""

from __future__ import annotations

import pytest

from isoperf import rrtrace
from isostack.dispatcher import trace as T


def test_each_transaction_gets_its_hops_from_the_first_events_after_the_previous_hop():
    # two transactions, 1000 ns apart; events in the order isostackd records them (TX_SEEN just before TX_SENT)
    records = []
    posted, peer, woke = [], [], []
    for base in (10_000, 20_000):
        posted.append(base)
        records += [(base + 100, T.TX_SEEN, 0), (base + 900, T.TX_SENT, 0)]
        peer.append(base + 600)  # the peer read before the dispatcher's send returned
        records += [(base + 1500, T.KERNEL_EVENT, 0), (base + 1700, T.RX_FILLED, 0)]
        woke.append(base + 2000)
        records.append((base + 2100, T.NOTIFIED, 0))  # after the spinning application woke
    records.append((5_000, T.KERNEL_EVENT, 0))  # an event before any transaction matches none
    hops = rrtrace.iso_hops(sorted(records), posted, peer, woke, skip=0)
    assert hops["app send -> tx seen"] == [0.1, 0.1]
    assert hops["tx seen -> peer read"] == [0.5, 0.5]
    assert hops["peer read -> kernel ev"] == [0.9, 0.9]
    assert hops["kernel ev -> rx filled"] == [0.2, 0.2]
    assert hops["rx filled -> app woke"] == [0.3, 0.3]
    assert hops["total"] == [2.0, 2.0]
    assert hops["tx seen -> tx sent"] == [0.8, 0.8]
    assert hops["rx filled -> notified"] == [0.4, 0.4]
    assert hops["peer read inside the send"] == [1.0, 1.0]


def test_a_transaction_without_its_events_is_left_out():
    hops = rrtrace.iso_hops([(50, T.TX_SEEN, 0), (60, T.TX_SENT, 0)], [40, 1000], [70, 1070], [200, 1200], skip=0)
    assert hops["total"] == []  # no kernel event, no rx fill: nothing matched


def test_the_trace_file_reads_back(tmp_path):
    t = T.Trace(str(tmp_path / "t"), max_records=2)
    t(T.TX_SENT, 3, at=123)
    t(T.RX_FILLED, 4, at=456)
    t(T.NOTIFIED, 5, at=789)  # past the limit: dropped
    t.dump()
    assert T.read(str(tmp_path / "t")) == [(123, T.TX_SENT, 3), (456, T.RX_FILLED, 4)]


def test_percentiles_and_help(capsys):
    assert rrtrace.percentiles([float(i) for i in range(100)]) == (50.0, 90.0, 99.0)
    with pytest.raises(SystemExit):
        rrtrace.main(["--help"])
    assert "python -m isoperf.rrtrace" in capsys.readouterr().out

"""A guest spraying source MACs cannot grow the switch's MAC table past its bound (issue 12, vhea point 8)."""

from __future__ import annotations

import time

from vhea_helpers import MAC_A, MAC_B, ethernet, serve_frontend, serve_stats, timed_exchange, vhea_serve

MAX_FDB_ENTRIES = 4096  # the documented bound (vhea.switch.MAX_FDB_ENTRIES, docs/device-model.md "Limits")
SPRAYED = MAX_FDB_ENTRIES + 1000


def test_a_port_spraying_source_macs_fills_the_table_to_its_bound_only(sockdir):
    with vhea_serve(sockdir, ["a", "b", "c"]):
        a, b, c = (serve_frontend(sockdir, p) for p in "abc")
        try:
            for fe in (a, b, c):
                fe.handshake()
            a.post_rx()
            b.post_rx()
            timed_exchange(a, b, 0)  # a's MAC is learned before the spray (the sprayed frames go to a only)
            b.send_frame(ethernet(MAC_A, MAC_B, bytes(46)))  # and b's
            for i in range(SPRAYED):
                src = f"02:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}:00:01"
                while True:
                    try:
                        c.send_frame(ethernet(MAC_A, src, bytes(46)))  # a's rx ring fills: dropped there
                        break
                    except BufferError:
                        time.sleep(0.001)
            deadline = time.monotonic() + 30
            while serve_stats(sockdir)["ports"]["c"]["from_guest_frames"] < SPRAYED:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            st = serve_stats(sockdir)
            assert len(st["switch"]["fdb"]) <= MAX_FDB_ENTRIES
            assert st["switch"]["fdb_not_learned"] >= SPRAYED - MAX_FDB_ENTRIES
            assert {"mac": MAC_B, "port": "b"} in st["switch"]["fdb"]
            timed_exchange(a, b, 1)  # still forwarding (b's entry was learned before the table filled)
        finally:
            for fe in (a, b, c):
                fe.close()

"""Real peer: DPDK testpmd's virtio-user (a real vhost-user front-end) on both ports of `vhea serve`.

testpmd A sends with `txonly` to a fixed unknown MAC (so the switch floods it to b), testpmd B counts with
`rxonly`; the counts must agree with `vhea stats`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from vhea import testpmd

CANNED = """
  ######################## NIC statistics for port 0  ########################
  RX-packets: 256        RX-missed: 0          RX-bytes:  16384
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 7          TX-errors: 0          TX-bytes:  448

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:            0          Tx-bps:            0
  ############################################################################
"""


def test_parse_port_stats_on_canned_output():
    st = testpmd.parse_port_stats(CANNED)
    assert st[0] == testpmd.PortStats(rx_packets=256, rx_bytes=16384, tx_packets=7, tx_bytes=448)


def vhea_stats(sockdir: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "stats", "--socket-dir", sockdir, "--json"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.vm
@pytest.mark.skipif(testpmd.available() is None, reason="dpdk-testpmd is not installed (apt: dpdk)")
@pytest.mark.parametrize("queues", [1, 2])
def test_testpmd_txonly_to_rxonly_through_vhea(queues):
    sockdir = tempfile.mkdtemp(prefix="vhtp", dir="/tmp")
    logdir = tempfile.mkdtemp(prefix="vhea-testpmd-")
    tag = f"{os.getpid()}q{queues}"
    serve = subprocess.Popen([sys.executable, "-m", "vhea.cli", "serve", "--socket-dir", sockdir, "--ports", "a,b",
                              "--queues", str(queues)], stderr=open(os.path.join(logdir, "vhea.log"), "w"))
    tp_a = tp_b = None
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(sockdir, "control.sock")):
            assert serve.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        tp_b = testpmd.Testpmd(testpmd.command(os.path.join(sockdir, "b.sock"), f"vhB{tag}", main_lcore=1,
                                               queues=queues), os.path.join(logdir, "b.log"))
        tp_b.send("set fwd rxonly", "start")
        deadline = time.monotonic() + 30
        while not vhea_stats(sockdir)["ports"]["b"]["connected"]:
            assert tp_b.proc.poll() is None, tp_b.output()
            assert time.monotonic() < deadline, "testpmd B never connected"
            time.sleep(0.2)
        time.sleep(2)  # B's queues are set up and polling
        tp_a = testpmd.Testpmd(testpmd.command(os.path.join(sockdir, "a.sock"), f"vhA{tag}", main_lcore=0,
                                               queues=queues), os.path.join(logdir, "a.log"))
        tp_a.send("set fwd txonly", "start")
        deadline = time.monotonic() + 30
        while vhea_stats(sockdir)["ports"]["a"]["from_guest_frames"] < 1000:
            assert tp_a.proc.poll() is None, tp_a.output()
            assert time.monotonic() < deadline, "no traffic from testpmd A"
            time.sleep(0.2)
        t0, n0 = time.monotonic(), vhea_stats(sockdir)["ports"]["a"]["from_guest_frames"]
        time.sleep(3)
        t1, n1 = time.monotonic(), vhea_stats(sockdir)["ports"]["a"]["from_guest_frames"]
        tp_a.send("stop", "show port stats all")
        time.sleep(1)
        out_a = tp_a.quit()
        tp_a = None
        time.sleep(1)  # let B drain its ring
        tp_b.send("stop", "show port stats all")
        time.sleep(1)
        out_b = tp_b.quit()
        tp_b = None
        st = vhea_stats(sockdir)
        a_stats = testpmd.parse_port_stats(out_a)[0]
        b_stats = testpmd.parse_port_stats(out_b)[0]
        pa, pb = st["ports"]["a"], st["ports"]["b"]
        print(f"queues={queues}: testpmd A tx {a_stats.tx_packets}, vhea a from guest {pa['from_guest_frames']}, "
              f"vhea b to guest {pb['to_guest_frames']} (drops {pb['drops']}), testpmd B rx {b_stats.rx_packets}; "
              f"{(n1 - n0) / (t1 - t0):.0f} frames/s")
        assert a_stats.tx_packets > 1000
        assert pa["from_guest_frames"] == a_stats.tx_packets
        assert pa["from_guest_bytes"] == a_stats.tx_bytes
        assert pb["to_guest_frames"] == b_stats.rx_packets
        assert pb["to_guest_bytes"] == b_stats.rx_bytes
        # everything A sent reached B or is a counted drop at b
        assert pb["to_guest_frames"] + sum(pb["drops"].values()) == pa["from_guest_frames"]
        if queues > 1:
            # testpmd spreads txonly over its tx queues: vhea saw traffic on more than one tx ring
            assert sum(1 for q in pa["queues"] if q["index"] % 2 == 1 and q["frames"] > 0) == queues
    finally:
        for tp in (tp_a, tp_b):
            if tp is not None:
                tp.kill()
        serve.terminate()
        serve.wait(10)
        for f in os.listdir(sockdir):
            os.unlink(os.path.join(sockdir, f))
        os.rmdir(sockdir)

"""802.3x flow control (vhea/pause.py): a receiver without rx buffers pauses the sender's tx queue instead of
losing frames, for at most its pause limit; both datapaths, over real sockets with the package's front-end."""

from __future__ import annotations

import json
import time

import pytest
from vhea_helpers import (
    BCAST,
    MAC_A,
    MAC_B,
    MAC_C,
    datapath,  # noqa: F401  (the fixture)
    frame,
    frontend,
    receive_n,
    running_server,
    wait_for,
)

from vhea import cli
from vhea.bench_frames import TSO_MSS, tso_test_frame
from vhea.offload import VHDR, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4

pytestmark = pytest.mark.usefixtures("datapath")

LONG_US = 1_000_000  # the highest pause limit: no test here waits that long before it reposts


def pause_of(server, port: str) -> dict:
    return server.stats()["ports"][port]["pause"]


def drops(server, port: str) -> dict:
    return server.stats()["ports"][port]["drops"]


def learn(server, fe, mac: str, dst: str = MAC_A) -> None:
    """Let the switch learn `mac` on fe's port (one frame from it; a receiver with buffers takes it)."""
    fe.send_frame(frame(dst, mac, 9999))


def test_receiver_without_buffers_pauses_the_sender_and_gets_every_frame_in_order(sockdir):
    with running_server(sockdir, ["a", "b"], flow_control=True, pause_max_us=LONG_US) as server, \
            frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()  # b posts no rx buffers yet
        sent = [frame(MAC_B, MAC_A, i, size=60 + 7 * i) for i in range(40)]
        a.send_frame(sent[0])
        assert wait_for(lambda: pause_of(server, "b")["held_frames"] == 1)
        for f in sent[1:]:
            a.send_frame(f)  # each kicks a's tx queue
        time.sleep(0.05)
        pb, pa = pause_of(server, "b"), pause_of(server, "a")
        assert pb["on"] and pb["events"] == 1 and pb["timeouts"] == 0 and pb["held_frames"] == 1
        assert pa["tx_queues_paused"] == [1] and pa["tx_pauses"] == 1
        # back-pressure: the rest stays in a's tx ring (not taken from the guest, so not lost either)
        assert server.stats()["ports"]["a"]["from_guest_frames"] == 1
        assert server.stats()["ports"]["a"]["queues"][1]["kicks"] >= 2
        assert drops(server, "b") == {} and drops(server, "a") == {}
        b.post_rx()
        assert receive_n(b, len(sent)) == sent
        assert wait_for(lambda: pause_of(server, "a")["tx_queues_paused"] == [])
        st = server.stats()["ports"]
        assert st["b"]["drops"] == {} and st["a"]["drops"] == {}
        assert st["b"]["to_guest_frames"] == len(sent) and st["a"]["from_guest_frames"] == len(sent)
        assert st["b"]["pause"]["held_frames"] == 0 and st["a"]["pause"]["tx_paused_us"] > 0


def test_a_batch_is_held_from_the_first_frame_that_finds_no_buffers(sockdir):
    """One kick for 30 frames, 7 rx buffers: 7 delivered, 23 held (the batch path stops at the 8th), then all."""
    with running_server(sockdir, ["a", "b"], flow_control=True, pause_max_us=LONG_US) as server, \
            frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx(7, kick=False)
        sent = [frame(BCAST, MAC_A, i) for i in range(30)]
        for f in sent:
            a.send_frame(f, kick=False)
        a.kick(a.tx_ring())
        got = receive_n(b, 7)
        assert got == sent[:7]
        assert wait_for(lambda: pause_of(server, "b")["held_frames"] == 23)
        assert drops(server, "b") == {}
        b.post_rx(10)  # in two steps: the held frames go as buffers come
        got += receive_n(b, 10)
        b.post_rx()
        got += receive_n(b, 13)
        assert got == sent
        assert drops(server, "b") == {}


def test_tso_frame_waits_for_enough_mergeable_buffers(sockdir):
    """A 64 KiB TSO frame to a GUEST_TSO peer needs ~33 MRG_RXBUF buffers: with 10 it is held, not dropped."""
    with running_server(sockdir, ["a", "b"], flow_control=True, pause_max_us=LONG_US) as server, \
            frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx(10)
        big = tso_test_frame()
        small = frame(MAC_B, MAC_A, 1)
        a.send_frame(big, vhdr=VHDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, TSO_MSS, 34, 16))
        a.send_frame(small)
        assert wait_for(lambda: pause_of(server, "b")["held_frames"] >= 1)
        time.sleep(0.05)
        assert b.receive() == [] and drops(server, "b") == {}
        b.post_rx()
        got = receive_n(b, 2)
        assert got == [big, small]
        assert drops(server, "b") == {}


def test_without_flow_control_frames_are_dropped_as_before(sockdir):
    with running_server(sockdir, ["a", "b"], flow_control=True) as server, \
            frontend(server, "a") as a, frontend(server, "b") as b:
        assert server.control_request(json.dumps({"cmd": "pause-set", "port": "b", "on": False}).encode())["on"] \
            is False
        a.handshake()
        b.handshake()
        for i in range(5):
            a.send_frame(frame(MAC_B, MAC_A, i))
        assert wait_for(lambda: drops(server, "b").get("rx_no_buffers") == 5)
        p = pause_of(server, "b")
        assert (p["on"], p["events"], p["held_frames"]) == (False, 0, 0)
        assert server.stats()["ports"]["a"]["from_guest_frames"] == 5


def test_receiver_that_never_reposts_loses_held_frames_after_the_limit_and_the_source_resumes(sockdir):
    limit_us = 100_000
    with running_server(sockdir, ["a", "b", "c"], flow_control=True, pause_max_us=limit_us) as server, \
            frontend(server, "a") as a, frontend(server, "b") as b, frontend(server, "c") as c:
        for fe in (a, b, c):
            fe.handshake()
        a.post_rx()
        c.post_rx()
        b.post_rx(1)  # for a's first frame (flooded: the switch does not know MAC_B yet)
        learn(server, a, MAC_A, dst=MAC_B)
        assert len(receive_n(b, 1)) == 1 and len(receive_n(c, 1)) == 1
        learn(server, b, MAC_B)  # unicast to a from now on
        learn(server, c, MAC_C)
        assert len(receive_n(a, 2)) == 2
        # b never posts rx buffers; a sends to b, then to c behind it (one batch)
        to_b = [frame(MAC_B, MAC_A, i) for i in range(3)]
        to_c = [frame(MAC_C, MAC_A, 100 + i) for i in range(3)]
        for f in to_b + to_c:
            a.send_frame(f, kick=False)
        t0 = time.monotonic()
        a.kick(a.tx_ring())
        assert wait_for(lambda: pause_of(server, "b")["held_frames"] == 3)
        assert pause_of(server, "c")["held_frames"] == 3  # c's frames wait behind b's, as on a paused link
        assert c.receive() == []
        got = receive_n(c, 3)
        waited = time.monotonic() - t0
        assert got == to_c
        assert limit_us / 1e6 * 0.9 <= waited < 2.0  # they waited for the limit, not (much) longer
        pb = pause_of(server, "b")
        assert pb["timeouts"] == 1 and pb["held_frames"] == 0 and pb["stalled_queues"] == [0]
        assert drops(server, "b") == {"rx_pause_timeout": 3}
        assert server.stats()["ports"]["b"]["queues"][0]["drops"] == {"rx_pause_timeout": 3}
        assert wait_for(lambda: pause_of(server, "a")["tx_queues_paused"] == [])
        # the stalled queue pauses nobody: a's traffic to c flows at once, b's is dropped at once
        more_c = [frame(MAC_C, MAC_A, 200 + i) for i in range(20)]
        t1 = time.monotonic()
        for i, f in enumerate(more_c):
            a.send_frame(frame(MAC_B, MAC_A, 300 + i))
            a.send_frame(f)
        assert receive_n(c, 20) == more_c
        assert time.monotonic() - t1 < 10 * limit_us / 1e6  # not paused again: 20 pauses would take 20 limits
        assert wait_for(lambda: drops(server, "b") == {"rx_pause_timeout": 23})
        assert pause_of(server, "b")["timeouts"] == 1
        # b posts buffers (and kicks): it pauses senders again instead of losing frames
        b.post_rx(1)
        assert wait_for(lambda: pause_of(server, "b")["stalled_queues"] == [])
        late = [frame(MAC_B, MAC_A, 400 + i) for i in range(3)]
        for f in late:
            a.send_frame(f, kick=False)
        a.kick(a.tx_ring())  # one batch: the first goes into b's buffer, the other two are held
        assert wait_for(lambda: pause_of(server, "b")["held_frames"] == 2)
        b.post_rx()
        assert receive_n(b, 3) == late
        assert drops(server, "b") == {"rx_pause_timeout": 23}


def test_receiver_disconnecting_while_frames_are_held(sockdir):
    with running_server(sockdir, ["a", "b"], flow_control=True, pause_max_us=LONG_US) as server, \
            frontend(server, "a") as a:
        a.handshake()
        a.post_rx()
        with frontend(server, "b") as b:
            b.handshake()
            for i in range(4):
                a.send_frame(frame(BCAST, MAC_A, i))
            assert wait_for(lambda: pause_of(server, "b")["held_frames"] >= 1)
        # b went away: its held frames are dropped as not_connected and a's tx queue resumes
        assert wait_for(lambda: pause_of(server, "a")["tx_queues_paused"] == [])
        assert wait_for(lambda: server.stats()["ports"]["a"]["from_guest_frames"] == 4)
        st = server.stats()["ports"]
        assert st["b"]["drops"] == {"not_connected": 4} and st["b"]["pause"]["held_frames"] == 0
        with frontend(server, "b") as b2:  # a new front-end on the port gets what comes now
            b2.handshake()
            b2.post_rx()
            f = frame(BCAST, MAC_A, 50)
            a.send_frame(f)
            assert receive_n(b2, 1) == [f]


def test_sender_disconnecting_while_its_frames_are_held(sockdir):
    with running_server(sockdir, ["a", "b"], flow_control=True, pause_max_us=LONG_US) as server, \
            frontend(server, "b") as b:
        b.handshake()
        with frontend(server, "a") as a:
            a.handshake()
            sent = [frame(BCAST, MAC_A, i) for i in range(3)]
            for f in sent:
                a.send_frame(f, kick=False)
            a.kick(a.tx_ring())
            assert wait_for(lambda: pause_of(server, "b")["held_frames"] == 3)
        assert wait_for(lambda: not server.stats()["ports"]["a"]["connected"])
        b.post_rx()  # the frames the switch had taken are still delivered
        assert receive_n(b, 3) == sent
        assert wait_for(lambda: pause_of(server, "a")["tx_queues_paused"] == [])
        with frontend(server, "a") as a2:  # and the port works again
            a2.handshake()
            f = frame(BCAST, MAC_A, 7)
            a2.send_frame(f)
            assert receive_n(b, 1) == [f]


def test_pause_settings_over_the_control_socket_and_the_cli(sockdir, capsys):
    with running_server(sockdir, ["a", "b"]) as server:
        ask = server.control_request
        assert server.stats()["ports"]["a"]["pause"]["on"] is False
        assert "error" in ask(b'{"cmd": "pause-set", "port": "a"}')
        assert "error" in ask(b'{"cmd": "pause-set", "port": "a", "on": 1}')
        assert "error" in ask(b'{"cmd": "pause-set", "port": "a", "on": true, "max_us": 0}')
        assert "error" in ask(b'{"cmd": "pause-set", "port": "a", "on": true, "bogus": 1}')
        assert "error" in ask(b'{"cmd": "pause-set", "port": "zz", "on": true}')
        assert server.stats()["ports"]["a"]["pause"]["on"] is False  # a rejected change changes nothing
        r = ask(b'{"cmd": "pause-set", "port": "a", "on": true, "max_us": 2500}')
        assert (r["ok"], r["on"], r["max_us"]) == (True, True, 2500)
        assert cli.main(["pause", "off", "--port", "a", "--socket-dir", sockdir]) == 0
        assert "flow control (pause) off, limit 2500 us" in capsys.readouterr().out
        assert cli.main(["pause", "show", "--port", "a", "--socket-dir", sockdir, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["on"], shown["max_us"]) == (False, 2500)
        assert cli.main(["pause", "show", "--port", "a", "--max-us", "5", "--socket-dir", sockdir]) == 2
        assert cli.main(["stats", "--socket-dir", sockdir]) == 0
        assert "pause" in capsys.readouterr().out


def test_serve_default_applies_to_every_port_and_to_ports_added_later(sockdir):
    with running_server(sockdir, ["a", "b"], flow_control=True, pause_max_us=1234) as server:
        assert server.control_request(b'{"cmd": "port-add", "name": "c"}')["ok"]
        for p in ("a", "b", "c"):
            assert (pause_of(server, p)["on"], pause_of(server, p)["max_us"]) == (True, 1234)


def test_multi_queue_receiver_pauses_per_rx_queue_and_the_tx_queue_waits_as_a_whole(sockdir):
    """A frame RSS puts on b's queue 1 (no buffers) is held; a's next frame, for b's queue 0 (buffers), waits
    behind it (a paused tx queue stops as a whole, as a paused link); both arrive once queue 1 has buffers."""
    from test_vhea_control import predicted, tcp_a_to_b

    with running_server(sockdir, ["a", "b"], queue_pairs=2, flow_control=True, pause_max_us=LONG_US) as server, \
            frontend(server, "a", queue_pairs=2) as a, frontend(server, "b", queue_pairs=2) as b:
        a.handshake()
        b.handshake()
        b.post_rx(pair=0)  # pair 1 gets no buffers yet
        sp1 = next(s for s in range(40000, 40100) if predicted(s) == 1)
        sp0 = next(s for s in range(40000, 40100) if predicted(s) == 0)
        f1, f0 = tcp_a_to_b(sp1), tcp_a_to_b(sp0)
        a.send_frame(f1)
        assert wait_for(lambda: pause_of(server, "b")["held_frames"] == 1)
        a.send_frame(f0)
        time.sleep(0.05)
        assert b.receive(pair=0) == [] and drops(server, "b") == {}
        b.post_rx(pair=1)
        assert receive_n(b, 1, pair=1) == [f1]
        assert receive_n(b, 1, pair=0) == [f0]
        st = server.stats()["ports"]["b"]
        assert st["drops"] == {} and st["pause"]["events"] == 1 and st["pause"]["held_frames"] == 0

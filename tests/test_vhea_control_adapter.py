"""Adapter behaviour controls over the control socket: per-queue interrupt coalescing, emulated link down
(the real link down: test_vhea_link.py)."""

from __future__ import annotations

import json
import time

import pytest
from vhea_helpers import BCAST, MAC_A, MAC_B, frame, frontend, receive_n, running_server, wait_for

from vhea.coalesce import Coalescer
from vhea.protocol import VIRTIO_RING_F_EVENT_IDX, bit


def ask(server, **req) -> dict:
    return server.control_request(json.dumps(req).encode())


def calls(server, port="b", ring=0) -> int:
    return server.stats()["ports"][port]["queues"][ring]["calls"]


def test_coalescing_holds_calls_until_frames_or_time(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=~bit(VIRTIO_RING_F_EVENT_IDX))  # every due call is made
        b.post_rx()
        r = ask(server, cmd="coalesce-set", port="b", queue=0, max_frames=8, max_usecs=400_000)
        assert r["ok"] and r["queues"][0]["max_frames"] == 8 and r["queues"][1]["max_frames"] == 0
        c0 = calls(server)
        for i in range(3):
            a.send_frame(frame(MAC_B, MAC_A, i))
            time.sleep(0.01)  # separate loop turns
        assert len(receive_n(b, 3)) == 3
        time.sleep(0.05)
        assert calls(server) == c0  # 3 < 8 frames and 400 ms not over: held back
        assert ask(server, cmd="coalesce-show", port="b")["queues"][0]["saved"] >= 1
        for i in range(5):
            a.send_frame(frame(MAC_B, MAC_A, 10 + i))
        assert len(receive_n(b, 5)) == 5
        assert wait_for(lambda: calls(server) == c0 + 1, timeout=0.3)  # the 8th frame: at once
        t0 = time.monotonic()
        a.send_frame(frame(MAC_B, MAC_A, 20))
        assert len(receive_n(b, 1)) == 1
        assert wait_for(lambda: calls(server) == c0 + 2, timeout=2.0)  # the time threshold
        assert 0.3 <= time.monotonic() - t0 < 1.5
        # off again: a call per loop turn
        ask(server, cmd="coalesce-set", port="b", max_frames=0, max_usecs=0)
        a.send_frame(frame(MAC_B, MAC_A, 30))
        assert len(receive_n(b, 1)) == 1
        assert wait_for(lambda: calls(server) == c0 + 3, timeout=0.5)


def test_coalesce_validation():
    c = Coalescer(4)
    for args, msg in [((8, 0), "needs max_usecs"), ((-1, 5), "max_frames must be"), ((1, 10**7), "max_usecs must"),
                      ((1, 5, 4), "not a ring of this port")]:
        with pytest.raises(ValueError, match=msg):
            c.set(*args)
    c.set(4, 50, 1)
    assert [q["max_frames"] for q in c.settings()] == [0, 4, 0, 0]


def test_emulated_link_down_drops_both_ways_with_a_reason(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        a.post_rx()
        b.post_rx()
        r = ask(server, cmd="link-set", port="b", up=False, emulate=True)
        assert r["ok"] and r["link"] == "down" and r["emulated"] and r["connection"] == "connected"
        a.send_frame(frame(BCAST, MAC_A, 1))  # towards b: dropped at b
        b.send_frame(frame(BCAST, MAC_B, 2))  # from b: dropped at b
        assert wait_for(lambda: server.stats()["ports"]["b"]["drops"].get("link_down") == 2)
        assert server.stats()["ports"]["b"]["link"] == "down"
        assert b.receive() == [] and a.receive() == []
        assert "up: true or false" in ask(server, cmd="link-set", port="b", up="no")["error"]
        ask(server, cmd="link-set", port="b", up=True)
        a.send_frame(frame(BCAST, MAC_A, 3))
        assert len(receive_n(b, 1)) == 1


def test_pacing_holds_a_port_to_its_rate_without_drops(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        rate = 8_000_000  # 1 MB/s
        r = ask(server, cmd="rate-set", port="a", rate_bps=rate, burst_bytes=70_000)
        assert r["ok"] and r["rate_bps"] == rate
        size, n = 1000, 200
        got: list[bytes] = []
        t0 = time.monotonic()
        for i in range(n):
            a.send_frame(frame(MAC_B, MAC_A, i, size=size))
            if i % 50 == 49:  # let the tx ring drain (the pacer keeps frames in it meanwhile)
                assert wait_for(lambda: a.reclaim(a.tx_ring()) >= 0 and len(a.tx_ring().free) > 200, timeout=5)
            got.extend(b.receive())
            if len(b.rx_ring().free) > 100:
                b.post_rx()
        assert wait_for(lambda: bool(got.extend(b.receive())) or len(got) >= n or
                        (len(b.rx_ring().free) > 100 and b.post_rx() and False), timeout=10)
        elapsed = time.monotonic() - t0
        expected = (n * size - 70_000) * 8 / rate  # what the burst does not cover
        assert len(got) == n
        assert expected * 0.8 <= elapsed <= expected * 2 + 1, (elapsed, expected)
        st = server.stats()["ports"]["a"]
        assert st["drops"] == {} and st["pacing"]["waits"] >= 1
        assert "rate must be" in ask(server, cmd="rate-set", port="a", rate_bps=-1)["error"]
        assert "burst must be" in ask(server, cmd="rate-set", port="a", rate_bps=rate, burst_bytes=10)["error"]
        ask(server, cmd="rate-set", port="a", rate_bps=0)
        t0 = time.monotonic()
        for i in range(50):
            a.send_frame(frame(MAC_B, MAC_A, i, size=size))
        got = receive_n(b, 50)
        assert len(got) == 50 and time.monotonic() - t0 < 1.0


def test_rx_drops_are_counted_per_queue(sockdir):
    from test_vhea_control import predicted, tcp_a_to_b

    with running_server(sockdir, ["a", "b"], queue_pairs=2) as server, \
            frontend(server, "a", queue_pairs=2) as a, frontend(server, "b", queue_pairs=2) as b:
        a.handshake()
        b.handshake()
        b.post_rx(pair=0)  # pair 1 gets no buffers
        sp1 = next(s for s in range(40000, 40100) if predicted(s) == 1)
        sp0 = next(s for s in range(40000, 40100) if predicted(s) == 0)
        a.send_frame(tcp_a_to_b(sp1))
        a.send_frame(tcp_a_to_b(sp0))
        assert len(receive_n(b, 1, pair=0)) == 1
        assert wait_for(lambda: server.stats()["ports"]["b"]["queues"][2]["drops"] == {"rx_no_buffers": 1})
        st = server.stats()["ports"]["b"]
        assert st["queues"][0]["drops"] == {} and st["drops"] == {"rx_no_buffers": 1}

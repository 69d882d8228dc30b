"""Classification through a running back-end: the control socket commands (vhea.control), and frames from a
front-end landing on the rx queue the Toeplitz hash, the RETA or a rule names (the `vhea rule`/`vhea rss`
command lines: test_vhea_ctl.py)."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vhea_classifier import ipv4_frame, ipv6_frame
from vhea_helpers import MAC_A, MAC_B, frontend, receive_n, running_server, wait_for

from vhea import control
from vhea.protocol import Request, VringState
from vhea.server import Server
from vhea.toeplitz import Toeplitz, tuple_input

A_IP, B_IP = "10.10.0.1", "10.10.0.2"


def tcp_a_to_b(sport: int, dport: int = 5201) -> bytes:
    f = ipv4_frame(A_IP, B_IP, sport, dport)
    return bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(MAC_A.replace(":", "")) + f[12:]


def predicted(sport: int, dport: int = 5201, queues: int = 2) -> int:
    return Toeplitz().hash(tuple_input(A_IP, B_IP, sport, dport)) % queues


# ---- control socket ------------------------------------------------------------------------------------------


def test_control_requests_and_errors(sockdir):
    with running_server(sockdir, ["a", "b"], queue_pairs=2) as server:
        ask = lambda **req: server.control_request(json.dumps(req).encode())  # noqa: E731
        r = ask(cmd="rule-add", port="a", proto="tcp", dport=5001, queue=1)
        assert r["ok"] and r["rule"]["id"] == 1 and r["rule"]["queue"] == 1
        r = ask(cmd="rule-add", port="a", proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, queue=0)
        assert r["rule"]["id"] == 2 and r["rule"]["src"] == "10.0.0.1"
        assert [x["id"] for x in ask(cmd="rule-list")["rules"]["a"]] == [1, 2]
        assert ask(cmd="rule-list")["rules"]["b"] == []
        assert ask(cmd="rule-list", port="b")["rules"] == {"b": []}
        assert ask(cmd="rule-del", port="a", id=1)["deleted"]["dport"] == 5001
        assert "unknown port 'z'" in ask(cmd="rule-add", port="z", proto="tcp", dport=1, queue=0)["error"]
        assert "beyond this port's 2 queue pair" in ask(cmd="rule-add", port="a", proto="tcp", dport=1,
                                                        queue=2)["error"]
        assert "needs queue" in ask(cmd="rule-add", port="a", proto="tcp", dport=1)["error"]
        assert "unknown field(s) bogus" in ask(cmd="rule-add", port="a", proto="tcp", dport=1, queue=0,
                                               bogus=1)["error"]
        assert "no rule with id 1" in ask(cmd="rule-del", port="a", id=1)["error"]
        show = ask(cmd="rss-show", port="a")
        assert show["queues"] == 2 and len(show["reta"]) == 128 and len(show["rules"]) == 1
        assert show["counters"]["rss"] == 0
        assert "40 bytes" in ask(cmd="rss-set", port="a", key="00" * 39)["error"]
        assert "hex digits" in ask(cmd="rss-set", port="a", key="zz")["error"]
        assert "power of two" in ask(cmd="rss-set", port="a", reta=[0, 1, 1])["error"]
        assert "beyond" in ask(cmd="rss-set", port="a", reta=[0, 5])["error"]
        assert "hash_types must be a list" in ask(cmd="rss-set", port="a", hash_types="ipv4")["error"]
        r = ask(cmd="rss-set", port="a", key="11" * 40, hash_types=["tcp4"], reta=[1, 0])
        assert r["ok"] and r["key"] == "11" * 40 and r["hash_types"] == ["tcp4"] and r["reta"] == [1, 0]
        assert ask(cmd="rss-show", port="b")["key"] != "11" * 40  # per port
        assert "unknown cmd" in ask(cmd="rss-frobnicate", port="a")["error"]


# ---- frames on the predicted queue ---------------------------------------------------------------------------


def test_frames_land_on_the_predicted_queue_then_on_the_rule_queue(sockdir):
    sports = list(range(40000, 40040))
    by_q = {0: [s for s in sports if predicted(s) == 0], 1: [s for s in sports if predicted(s) == 1]}
    assert by_q[0] and by_q[1]
    with running_server(sockdir, ["a", "b"], queue_pairs=2) as server, \
            frontend(server, "a", queue_pairs=2) as a, frontend(server, "b", queue_pairs=2) as b:
        a.handshake()
        b.handshake()
        b.post_rx(pair=0)
        b.post_rx(pair=1)
        for s in sports:
            a.send_frame(tcp_a_to_b(s))
        got0 = receive_n(b, len(by_q[0]), pair=0)
        got1 = receive_n(b, len(by_q[1]), pair=1)
        assert sorted(int.from_bytes(f[34:36], "big") for f in got0) == by_q[0]
        assert sorted(int.from_bytes(f[34:36], "big") for f in got1) == by_q[1]
        st = server.stats()["ports"]["b"]
        assert st["queues"][0]["frames"] == len(by_q[0]) and st["queues"][2]["frames"] == len(by_q[1])
        assert st["classifier"]["rss"] == len(sports) and st["classifier"]["classified"] == [len(by_q[0]),
                                                                                            len(by_q[1])]

        # a dst-port rule sends every flow to port 5201 to queue 1; other ports still follow RSS
        server.control_request(json.dumps({"cmd": "rule-add", "port": "b", "proto": "tcp", "dport": 5201,
                                           "queue": 1}).encode())
        for s in by_q[0][:5]:
            a.send_frame(tcp_a_to_b(s))
        assert len(receive_n(b, 5, pair=1)) == 5
        # a 5-tuple rule beats the port rule
        server.control_request(json.dumps({"cmd": "rule-add", "port": "b", "proto": "tcp", "src": A_IP,
                                           "dst": B_IP, "sport": by_q[0][0], "dport": 5201, "queue": 0}).encode())
        a.send_frame(tcp_a_to_b(by_q[0][0]))
        assert len(receive_n(b, 1, pair=0)) == 1
        rules = server.control_request(b'{"cmd": "rule-list", "port": "b"}')["rules"]["b"]
        assert [r["hits"] for r in rules] == [5, 1]

        # the guest turns pair 1 off (ethtool -L combined 1): its frames fall back to pair 0, counted
        b.call(Request.SET_VRING_ENABLE, VringState(2, 0).pack())
        assert wait_for(lambda: not server.ports["b"].handler.device.rings[2].ready)
        for s in by_q[1][:3]:
            a.send_frame(tcp_a_to_b(s, dport=5202))
        assert len(receive_n(b, 3, pair=0)) == 3
        assert server.stats()["ports"]["b"]["classifier"]["not_ready_fallback"] == 3


def test_ipv6_and_non_ip_frames(sockdir):
    with running_server(sockdir, ["a", "b"], queue_pairs=2) as server, \
            frontend(server, "a", queue_pairs=2) as a, frontend(server, "b", queue_pairs=2) as b:
        a.handshake()
        b.handshake()
        b.post_rx(pair=0)
        b.post_rx(pair=1)
        macs = bytes.fromhex(MAC_B.replace(":", "") + MAC_A.replace(":", ""))
        q = Toeplitz().hash(tuple_input("fd00::1", "fd00::2", 1000, 2000)) % 2
        a.send_frame(macs + ipv6_frame("fd00::1", "fd00::2", 1000, 2000)[12:])
        assert len(receive_n(b, 1, pair=q)) == 1
        a.send_frame(macs + b"\x08\x06" + bytes(46))  # ARP-sized junk: queue 0
        assert len(receive_n(b, 1, pair=0)) == 1


def test_settings_outlive_a_reconnect(sockdir):
    with running_server(sockdir, ["a", "b"], queue_pairs=2) as server:
        server.control_request(b'{"cmd": "rule-add", "port": "b", "proto": "tcp", "dport": 5201, "queue": 1}')
        server.control_request(b'{"cmd": "rss-set", "port": "b", "reta": [1, 1]}')
        for _ in range(2):  # a guest that goes away and comes back keeps its port's classification
            with frontend(server, "a", queue_pairs=2) as a, frontend(server, "b", queue_pairs=2) as b:
                a.handshake()
                b.handshake()
                b.post_rx(pair=1)
                a.send_frame(tcp_a_to_b(40000, dport=5201))
                a.send_frame(tcp_a_to_b(40001, dport=80))
                assert len(receive_n(b, 2, pair=1)) == 2
            assert wait_for(lambda: not server.stats()["ports"]["b"]["connected"])
        show = server.control_request(b'{"cmd": "rss-show", "port": "b"}')
        assert show["reta"] == [1, 1] and show["rules"][0]["hits"] == 2


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                    max_leaves=6)
FIELDS = ["port", "proto", "src", "dst", "sport", "dport", "queue", "id", "key", "hash_types", "reta", "queues",
          "max_frames", "max_usecs", "up", "rate_bps", "burst_bytes"]
GOOD = {"port": st.sampled_from(["a", "b", "zz"]), "proto": st.sampled_from(["tcp", "udp", "icmp"]),
        "src": st.sampled_from(["10.0.0.1", "fd00::1", "x"]), "dst": st.sampled_from(["10.0.0.2", "fd00::2"]),
        "key": st.sampled_from(["00" * 40, "ab" * 39, "zz"])}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(list(control.COMMANDS)),
       fields=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6), data=st.data())
def test_any_control_request_gets_an_answer(sockdir, cmd, fields, data):
    server = Server(sockdir, ["a", "b"], queue_pairs=2, control=control)  # not bound: control_request needs no sockets
    req = {"cmd": cmd, **fields}
    for k, strat in GOOD.items():  # plausible values often, so requests get past the first check
        if data.draw(st.booleans()):
            req[k] = data.draw(strat)
    reply = server.control_request(json.dumps(req).encode())
    assert isinstance(reply, dict) and ("ok" in reply) != ("error" in reply)
    json.dumps(reply)
    server.sel.close()
    for fd in (server._wake_r, server._wake_w):
        os.close(fd)

"""isoperf.server on loopback: what it refuses, what it detects, the intervals it reports."""

from __future__ import annotations

import socket

from isoperf_helpers import ServerThread

import isoperf.client
import isoperf.protocol
from isoperf.protocol import RunParams


def test_server_refuses_unknown_protocol_version_and_stack():
    for start, message in [
        (
            {"type": "start", "version": 99, "test": "stream", "size": 10, "connections": 1, "duration": 1},
            "protocol version 99",
        ),
        (
            {"type": "start", "version": 3, "test": "udp_rr", "size": 10, "connections": 1, "duration": 1},
            "test 'udp_rr' is not implemented",
        ),
        (
            {
                "type": "start",
                "version": 3,
                "test": "stream",
                "stack": "dpdk",
                "size": 10,
                "connections": 1,
                "duration": 1,
            },
            "unknown stack 'dpdk'",
        ),
    ]:
        server = ServerThread()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            ctrl = isoperf.protocol.Control(s)
            ctrl.send(**start)
            reply = ctrl.recv()
        assert server.join() == 1
        assert reply["type"] == "error" and message in reply["message"]


def test_one_corrupted_byte_fails_the_run():
    server = ServerThread()
    params = RunParams(size=1000, connections=2, duration=0.3, warmup=0.1, verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params, _corrupt_byte=3500)
    assert server.join() == 1
    assert r["verified"] is False
    assert len(r["errors"]) == 1
    assert r["errors"][0].startswith("connection 0 message 3 ")


def test_stream_intervals_use_the_servers_marks():
    server = ServerThread()
    params = RunParams(test="stream", size=512, duration=0.25, warmup=0.1, intervals=2)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and len(r["intervals"]) == 2
    assert sum(i["bytes"] for i in r["intervals"]) == r["bytes"] > 0

"""isoperf.client on loopback (a real server thread): stream and maerts figures, pinning, SO_SNDBUF, a
connection that breaks at the end."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from isoperf_helpers import ServerThread, Wrapped

import isoperf.client
import isoperf.sockets
import isoperf.workers
from isoperf.protocol import RunParams


def test_stream_counts_every_byte_sent():
    server = ServerThread()
    params = RunParams(size=1448, connections=1, duration=0.5, warmup=0.2)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert 0 < r["bytes"] <= r["server_total_bytes"]
    assert r["duration"] == pytest.approx(0.5, abs=0.25)
    assert r["throughput_bps"] == pytest.approx(r["bytes"] * 8 / r["duration"], rel=1e-3)
    assert r["messages"] == r["bytes"] // 1448
    assert r["verified"] is None
    assert "all" in r["cpu"]["client"] and "all" in r["cpu"]["server"]


def test_stream_with_verify_and_several_connections():
    server = ServerThread()
    params = RunParams(size=100, connections=3, duration=0.4, warmup=0.1, verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["verified"] is True
    assert r["server_total_bytes"] == r["client_total_bytes"]
    assert r["server_total_bytes"] % 100 == 0


def test_maerts_client_receives_and_verifies_every_byte():
    server = ServerThread()
    params = RunParams(test="maerts", size=1000, connections=2, duration=0.5, warmup=0.2, verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is True
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert r["client_total_bytes"] % 1000 == 0
    assert 0 < r["bytes"] < r["client_total_bytes"]  # the warm-up is not in the measured interval
    assert r["duration"] == pytest.approx(0.5, abs=0.25)
    assert r["messages"] == r["bytes"] // 1000
    assert r["throughput_bps"] == pytest.approx(r["bytes"] * 8 / r["duration"], rel=1e-3)


def test_maerts_one_corrupted_byte_from_the_server_fails_the_run():
    server = ServerThread(corrupt_byte=5 * 200 + 17)
    params = RunParams(test="maerts", size=200, connections=2, duration=0.3, warmup=0.1, verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0  # the server does not know; the receiving client does
    assert r["verified"] is False
    assert r["errors"] == ["connection 0 message 5 (stream offset 1000): payload differs from the expected pattern"]


def test_cpu_binding_pins_every_worker_thread(monkeypatch):
    pinned = []
    real = os.sched_setaffinity

    def spy(pid, cpus):
        real(pid, cpus)
        pinned.append((threading.current_thread().name, os.sched_getaffinity(0)))

    monkeypatch.setattr(isoperf.workers.os, "sched_setaffinity", spy)
    cpu = max(os.sched_getaffinity(0))
    server = ServerThread()
    params = RunParams(test="rr", size=16, connections=3, duration=0.2, warmup=0)
    r = isoperf.client.run_client("127.0.0.1", server.port, params, cpu=cpu)
    assert server.join() == 0
    assert r["errors"] == [] and r["cpu_binding"] == cpu
    assert sorted(name for name, _ in pinned) == ["isoperf-rrclient0", "isoperf-rrclient1", "isoperf-rrclient2"]
    assert all(cpus == {cpu} for _, cpus in pinned)


def test_sndbuf_is_set_on_the_data_sockets_before_any_data(monkeypatch):
    seen = []
    real = isoperf.sockets.connect

    def connect(host, port, timeout, stack="legacy"):
        s = real(host, port, timeout, stack)
        if port != server.port:  # a data connection (the control connection keeps the default)
            orig = s.setsockopt

            def setsockopt(level, name, value):
                seen.append((level, name, value, s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)))
                return orig(level, name, value)

            s = Wrapped(s, setsockopt)
        return s

    server = ServerThread()
    monkeypatch.setattr(isoperf.sockets, "connect", connect)
    r = isoperf.client.run_client("127.0.0.1", server.port, RunParams(size=64, connections=2, duration=0.2, warmup=0),
                           sndbuf=65536)
    assert server.join() == 0 and r["errors"] == [] and r["sndbuf"] == 65536
    assert [(lvl, name, value) for lvl, name, value, _ in seen] == [(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)] * 2


def test_a_connection_broken_at_the_end_is_an_error_in_the_result_not_a_crash(monkeypatch):
    """A data connection reset under the client (its shutdown fails): the session still ends and reports it."""
    real = isoperf.sockets.connect

    def connect(host, port, timeout, stack="legacy"):
        s = real(host, port, timeout, stack)
        if port != server.port:
            real_shutdown = s.shutdown

            def shutdown(how):
                real_shutdown(how)  # the server's side ends (as a reset would end it), the call fails
                raise ConnectionResetError(104, "Connection reset by peer")

            s = Wrapped(s, s.setsockopt)
            s.shutdown = shutdown
        return s

    server = ServerThread()
    monkeypatch.setattr(isoperf.sockets, "connect", connect)
    r = isoperf.client.run_client("127.0.0.1", server.port, RunParams(size=64, connections=2, duration=0.2, warmup=0))
    server.join()
    assert "connection 0: shutdown failed: [Errno 104] Connection reset by peer" in r["errors"]
    assert "connection 1: shutdown failed: [Errno 104] Connection reset by peer" in r["errors"]

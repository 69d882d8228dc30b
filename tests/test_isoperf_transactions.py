"""isoperf.transactions on loopback: rr and crr (one client loop), latency percentiles, verification."""

from __future__ import annotations

import socket

import pytest
from isoperf_helpers import ServerThread

import isoperf.client
import isoperf.sockets
from isoperf.protocol import RunParams


def _ordered(lat: dict) -> bool:
    return lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


@pytest.mark.parametrize("test", ["rr", "crr"])
def test_transactions_with_latency_percentiles(test):
    server = ServerThread()
    params = RunParams(test=test, size=64, response_size=300, connections=2, duration=0.5, warmup=0.2,
                       verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is True
    assert r["test"] == test and r["response_size"] == 300
    assert r["transactions"] > 0 and r["messages"] == r["transactions"]
    assert r["transactions_per_s"] == pytest.approx(r["transactions"] / r["duration"], rel=1e-3)
    assert r["bytes"] == r["transactions"] * (64 + 300)
    lat = r["latency_us"]
    assert lat["samples"] == r["transactions"]  # one sample per measured transaction, warm-up excluded
    assert _ordered(lat) and lat["p50"] > 0
    # lock-step: each connection's latencies add up to at most the interval, plus the two straddling its marks
    assert lat["mean"] * r["transactions"] <= 2 * (r["duration"] * 1e6 + 2 * lat["max"])
    assert r["server_total_bytes"] == r["client_total_bytes"] > r["bytes"]
    assert r["summary"]["transactions_per_s"]["mean"] == r["transactions_per_s"]


def test_rr_without_verification_has_the_same_figures():
    server = ServerThread()
    params = RunParams(test="rr", size=1, connections=1, duration=0.3, warmup=0)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is None
    assert r["transactions"] > 0 and r["latency_us"]["samples"] == r["transactions"]
    hist = r["latency_histogram"]  # every measured transaction is in the histogram, and p50 lies in its range
    assert sum(hist["counts"]) == r["transactions"]
    top = hist["first_us"] * 10 ** (len(hist["counts"]) / hist["buckets_per_decade"])
    assert hist["first_us"] <= r["latency_us"]["p50"] < top
    assert r["response_size"] == 1


@pytest.mark.parametrize("test", ["rr", "crr"])
def test_rr_corrupted_request_fails_on_the_server(test):
    server = ServerThread()
    params = RunParams(test=test, size=100, connections=1, duration=0.3, warmup=0.1, verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params, _corrupt_byte=2 * 100 + 98)  # request 2's crc32
    assert server.join() == 1
    assert r["verified"] is False
    word = "request" if test == "rr" else "transaction"
    assert r["errors"] == [f"connection 0 {word} 2: checksum mismatch"]


@pytest.mark.parametrize("test", ["rr", "crr"])
def test_rr_corrupted_response_fails_on_the_client(test):
    server = ServerThread(corrupt_byte=4 * 80 + 20)  # response 4, a payload byte
    params = RunParams(test=test, size=20, response_size=80, connections=2, duration=0.3, warmup=0.1,
                       verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["verified"] is False
    word = "response" if test == "rr" else "transaction"
    assert r["errors"] == [f"connection 0 {word} 4: payload differs from the expected pattern"]


def test_intervals_are_each_reported_with_mean_stddev():
    server = ServerThread()
    params = RunParams(test="rr", size=32, connections=1, duration=0.3, warmup=0.1, intervals=3)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["interval_count"] == 3 and len(r["intervals"]) == 3
    assert sum(i["transactions"] for i in r["intervals"]) == r["transactions"]
    assert sum(i["latency_us"]["samples"] for i in r["intervals"]) == r["latency_us"]["samples"]
    assert r["duration"] == pytest.approx(sum(i["duration"] for i in r["intervals"]), abs=0.01)
    for i in r["intervals"]:
        assert 0.29 <= i["duration"] < 5.0 and "all" in i["cpu"]["client"]  # never shorter; a loaded host stretches it
    tps = [i["transactions_per_s"] for i in r["intervals"]]
    s = r["summary"]["transactions_per_s"]
    assert s["mean"] == pytest.approx(sum(tps) / 3, abs=0.01) and s["stddev"] >= 0
    assert r["summary"]["latency_p99_us"]["mean"] > 0


def test_rr_data_sockets_disable_nagle(monkeypatch):
    """As sockperf: a message over one MSS must not wait for the ACK of its first segments (MTU 1500 guests)."""
    seen = []
    real = isoperf.sockets.set_nodelay

    def spy(sock):
        real(sock)
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(isoperf.sockets, "set_nodelay", spy)
    server = ServerThread()
    r = isoperf.client.run_client("127.0.0.1", server.port, RunParams(test="rr", size=64, response_size=4000,
                                                               connections=2, duration=0.2, warmup=0))
    assert server.join() == 0 and r["errors"] == []
    assert len(seen) == 4 and all(seen)  # two client and two server data sockets

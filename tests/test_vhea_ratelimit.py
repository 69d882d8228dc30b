"""The per-peer rate limit on warnings (vhea/ratelimit.py; isostackd's copy, isostack/dispatcher/ratelimit.py,
is the same code: the guest package cannot import vhea), and vhea's per-port warnings under a flood."""

from __future__ import annotations

import logging
import os

import pytest
from vhea_helpers import frontend, running_server

import isostack.dispatcher.ratelimit as iso_ratelimit
import vhea.ratelimit as vhea_ratelimit
from vhea.protocol import Request


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def record(msg: str, *args, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("t", level, __file__, 1, msg, args, None)


@pytest.fixture(params=[vhea_ratelimit, iso_ratelimit], ids=["vhea", "isostackd"])
def limit(request):
    clock = Clock()
    dropped = []
    f = request.param.PeerWarningLimit({"port %s": None, "attach refused": "attach"}, burst=3, window_s=10.0,
                                       clock=clock, on_suppressed=lambda: dropped.append(1))
    return f, clock, dropped


def test_a_burst_per_peer_passes_then_the_rest_is_counted(limit):
    f, clock, dropped = limit
    passed = [f.filter(record("port %s: bad %d", "a", i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert f.suppressed("a") == 7 == f.total == len(dropped)
    assert f.filter(record("port %s: bad", "b"))  # another peer has its own burst
    assert f.filter(record("attach refused: %s", "junk"))  # a fixed peer name
    assert f.filter(record("something else %s", "a"))  # not a peer's warning
    assert f.filter(record("port %s: info", "a", level=logging.INFO))  # below WARNING: untouched


def test_the_first_warning_of_a_new_window_says_how_many_were_dropped(limit):
    f, clock, _ = limit
    for i in range(8):
        f.filter(record("port %s: bad %d", "a", i))
    clock.now += 10.0
    r = record("port %s: bad %d", "a", 99)
    assert f.filter(r)
    assert r.getMessage() == "port a: bad 99 (5 more warnings of this peer suppressed before this one)"
    r2 = record("port %s: bad %d", "a", 100)
    assert f.filter(r2) and r2.getMessage() == "port a: bad 100"
    assert f.suppressed("a") == 5


def test_the_peers_remembered_are_bounded(limit, monkeypatch):
    f, clock, _ = limit
    module = vhea_ratelimit if isinstance(f, vhea_ratelimit.PeerWarningLimit) else iso_ratelimit
    monkeypatch.setattr(module, "MAX_PEERS", 8)
    for i in range(100):
        clock.now += 0.01
        assert f.filter(record("port %s: bad", f"p{i}"))
    assert len(f.peers) <= 8
    assert "p99" in f.peers


def test_a_front_end_flooding_warnings_gets_a_burst_in_the_log_and_a_count(sockdir, caplog):
    """Fds on a request that takes none: vhea closes them and warns, once per message, without closing the
    connection; 50 such messages log BURST warnings and count the rest on the port."""
    caplog.set_level(logging.WARNING)
    name = "a"  # a new server starts its ports' budgets afresh
    with running_server(sockdir, [name]) as server, frontend(server, name) as fe:
        fe.handshake()
        for _ in range(50):
            r, w = os.pipe()
            fe.call(Request.SET_OWNER, b"", [r, w])
            os.close(r)
            os.close(w)
        port = server.stats()["ports"][name]
        logged = [m for m in caplog.messages if m.startswith(f"port {name}: ") and "carried 2 fd(s)" in m]
        assert len(logged) == vhea_ratelimit.BURST
        assert port["warnings_suppressed"] == 50 - vhea_ratelimit.BURST
        assert port["connected"]
    with running_server(sockdir, [name]) as server:
        assert server.stats()["ports"][name]["warnings_suppressed"] == 0

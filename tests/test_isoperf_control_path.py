"""The control connection apart from the data path (a management network), and why a session failed reaching
the client instead of a bare broken pipe."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import isoperf.server
from isoperf.client import run_client
from isoperf.errors import IsoperfError
from isoperf.protocol import PROTOCOL_VERSION, Control, RunParams

CONTROL_ADDR, DATA_ADDR = "127.0.0.1", "127.0.0.2"  # two loopback addresses stand for two networks


def _server(bind: str, data_bind: str | None) -> tuple[threading.Thread, list[int], dict]:
    bound = threading.Event()
    port: list[int] = []
    out: dict = {}

    def ready(p: int) -> None:
        port.append(p)
        bound.set()

    def run() -> None:
        out["status"] = isoperf.server.run_server(bind, 0, once=True, ready=ready, data_bind=data_bind)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert bound.wait(5)
    return t, port, out


def test_control_and_data_take_different_addresses():
    """Control listens on one address only and data on the other only: the run works only if the client
    sends each connection where it belongs."""
    t, port, out = _server(CONTROL_ADDR, DATA_ADDR)
    params = RunParams(test="stream", size=1000, connections=2, duration=0.3, warmup=0.1, verify=True)
    result = run_client(DATA_ADDR, port[0], params, control=(CONTROL_ADDR, port[0]))
    t.join(10)
    assert result["errors"] == [] and result["verified"] is True
    assert result["bytes"] > 0 and out["status"] == 0


def test_without_a_control_address_the_client_cannot_reach_a_control_port_bound_elsewhere():
    t, port, _ = _server(CONTROL_ADDR, DATA_ADDR)
    params = RunParams(test="stream", size=1000, connections=1, duration=0.2, warmup=0.0)
    with pytest.raises(IsoperfError, match="cannot reach isoperf server at 127.0.0.2"):
        run_client(DATA_ADDR, port[0], params, connect_timeout=1.0)
    with socket.create_connection((CONTROL_ADDR, port[0])):  # let the --once server end
        pass
    t.join(10)


def test_the_data_listener_binds_to_the_data_address():
    t, port, _ = _server(CONTROL_ADDR, DATA_ADDR)
    with socket.create_connection((CONTROL_ADDR, port[0])) as s:
        ctrl = Control(s)
        ctrl.send(type="start", version=PROTOCOL_VERSION, test="stream", stack="legacy", size=100, connections=1,
                  duration=0.2, warmup=0.0, intervals=1, verify=False, response_size=None)
        data_port = ctrl.expect("ready")["data_port"]
        with pytest.raises(OSError):  # not on the control address
            socket.create_connection((CONTROL_ADDR, data_port), timeout=1).close()
        with socket.create_connection((DATA_ADDR, data_port), timeout=1) as d:
            d.sendall(b"ISOP\x00\x00\x00\x00")
            ctrl.expect("accepted")
    t.join(10)


def test_a_peer_that_closed_after_an_error_is_reported_with_its_words_not_a_broken_pipe():
    a, b = socket.socketpair()
    b.sendall(json.dumps({"type": "error", "message": "timed out waiting for mark"}).encode() + b"\n")
    b.close()
    ctrl = Control(a)
    with pytest.raises(IsoperfError) as e:
        for _ in range(100):  # the first sends may still land in a buffer
            ctrl.send(type="mark", phase="begin")
    assert "the peer said: timed out waiting for mark" in str(e.value)
    assert "'mark'" in str(e.value)
    a.close()


def test_a_session_that_fails_after_ready_tells_the_client_why():
    """A failure in the middle of a session (here an unknown control message) reaches the client as an error
    message before the server closes; before, the client saw only the closed connection."""
    t, port, out = _server("127.0.0.1", None)
    with socket.create_connection(("127.0.0.1", port[0])) as s:
        ctrl = Control(s)
        ctrl.send(type="start", version=PROTOCOL_VERSION, test="stream", stack="legacy", size=100, connections=1,
                  duration=5, warmup=0.0, intervals=1, verify=False, response_size=None)
        data_port = ctrl.expect("ready")["data_port"]
        d = socket.create_connection(("127.0.0.1", data_port))
        d.sendall(b"ISOP\x00\x00\x00\x00")
        ctrl.expect("accepted")
        ctrl.send(type="bogus")
        with pytest.raises(IsoperfError, match="server: unexpected control message 'bogus'"):
            ctrl.expect("result", timeout=10)
        d.close()
    t.join(10)
    assert out["status"] == 1


def test_the_server_outwaits_a_client_that_joins_slow_workers_after_its_last_mark(monkeypatch):
    """After its last mark the client may spend CONTROL_TIMEOUT joining its workers (64 senders blocked on full
    sockets in a starved TCG guest did) before it says done; the server used to give up CONTROL_TIMEOUT after
    the measured interval and the case failed with "timed out waiting for the peer"."""
    monkeypatch.setattr(isoperf.server, "CONTROL_TIMEOUT", 2.0)
    t, port, out = _server("127.0.0.1", None)
    with socket.create_connection(("127.0.0.1", port[0])) as s:
        ctrl = Control(s)
        ctrl.send(type="start", version=PROTOCOL_VERSION, test="stream", stack="legacy", size=100, connections=1,
                  duration=0.2, warmup=0.0, intervals=1, verify=False, response_size=None)
        data_port = ctrl.expect("ready")["data_port"]
        d = socket.create_connection(("127.0.0.1", data_port))
        d.sendall(b"ISOP\x00\x00\x00\x00")
        ctrl.expect("accepted")
        ctrl.send(type="mark", phase="begin")
        ctrl.send(type="mark", phase="end")
        time.sleep(3.0)  # longer than the old wait (0.2 s + 2 s), shorter than the new one (0.2 s + 4 s)
        d.close()
        ctrl.send(type="done", sent_bytes=0)
        result = ctrl.expect("result", timeout=10)
    t.join(10)
    assert "timed out" not in json.dumps(result) and out["status"] == 0

"""isoperf.sockets' IsoStack path: the client's data connections on IsoStack (`--stack iso`), for real.

The client opens its *data* connections with isostack.frontend.create_connection (the control connection
stays a kernel socket), with payload verification on, against isoperf's own (kernel) server on 127.0.0.1
and an isostackd started for the test. The front-end is only spied on (calls counted), not replaced.
"""

import pytest
from isoperf_helpers import ServerThread, free_port

import isoperf.cli
import isoperf.client
import isoperf.sockets
from isoperf.errors import IsoperfError
from isoperf.protocol import RunParams
from isostack import frontend


@pytest.fixture
def isostackd(tmp_path, monkeypatch, isostackd_launcher):
    path = tmp_path / "isostackd.sock"
    daemon = isostackd_launcher.start(path)
    monkeypatch.setenv("ISOSTACK_SOCKET", str(path))
    monkeypatch.setattr(frontend, "_default", None)  # attach to this daemon, not an earlier one
    try:
        yield path
    finally:
        if frontend._default is not None:
            frontend._default.close()
        isostackd_launcher.stop(daemon)


@pytest.mark.parametrize("connections,size", [(1, 64), (4, 64), (2, 1448)])
def test_isoperf_stream_over_isostack_verified(isostackd, monkeypatch, connections, size):
    data_conns = []
    real = frontend.create_connection

    def spy(address, *args, **kw):
        s = real(address, *args, **kw)
        data_conns.append(s)
        return s

    monkeypatch.setattr(frontend, "create_connection", spy)
    server = ServerThread()
    params = RunParams(size=size, connections=connections, duration=0.6, warmup=0.2, stack="iso", verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["verified"] is True
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert len(data_conns) == connections  # the data connections only; control is a kernel socket
    assert all(isinstance(s, frontend.IsoSocket) for s in data_conns)
    assert r["stack"] == "iso"
    assert frontend._default is not None and frontend._default.closed  # the client detached at the end


def test_isoperf_cli_stack_iso(isostackd, capsys):
    server = ServerThread()
    rc = isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(server.port), "--stack", "iso",
                       "--size", "64", "--duration", "0.5", "--warmup", "0.1", "--verify", "--json"])
    assert server.join() == 0
    assert rc == 0, capsys.readouterr().err
    assert '"stack": "iso"' in capsys.readouterr().out


def test_isoperf_stack_iso_without_isostackd_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ISOSTACK_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.setattr(frontend, "_default", None)
    with pytest.raises(IsoperfError, match="cannot open an IsoStack connection to 127.0.0.1:.*isostackd"):
        isoperf.sockets.connect("127.0.0.1", free_port(), 1.0, "iso")


@pytest.mark.parametrize("test,connections", [("maerts", 2), ("rr", 1), ("rr", 3), ("crr", 2)])
def test_isoperf_other_tests_over_isostack_verified(isostackd, monkeypatch, test, connections):
    """MAERTS (the IsoStack client receives), RR and CRR (every CRR transaction opens an IsoStack socket)."""
    opened = []
    real = frontend.create_connection

    def spy(address, *args, **kw):
        s = real(address, *args, **kw)
        opened.append(s)
        return s

    monkeypatch.setattr(frontend, "create_connection", spy)
    server = ServerThread()
    params = RunParams(test=test, size=100, connections=connections, duration=0.6, warmup=0.2, stack="iso",
                       verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is True
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert all(isinstance(s, frontend.IsoSocket) for s in opened)
    if test == "crr":
        assert len(opened) >= r["transactions"] > 0  # one IsoStack connection per transaction
    else:
        assert len(opened) == connections
    if test in ("rr", "crr"):
        lat = r["latency_us"]
        assert lat["samples"] == r["transactions"] > 0
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def test_isoperf_rr_over_isostack_catches_a_corrupted_response(isostackd):
    server = ServerThread(corrupt_byte=3 * 64 + 30)
    params = RunParams(test="rr", size=64, duration=0.4, warmup=0.1, stack="iso", verify=True)
    r = isoperf.client.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["verified"] is False
    assert r["errors"] == ["connection 0 response 3: payload differs from the expected pattern"]

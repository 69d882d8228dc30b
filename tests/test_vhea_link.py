"""`vhea link down|up`: link down closes the port's vhost-user connection (what QEMU turns into the guest NIC's
link going down) and serves no new one until link up; the other ports keep forwarding; `--emulate` keeps the
old drop-only behaviour. Tested with the Python test front-end, in both roles."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
from test_vhea_lifecycle import accept_frontend, exchange, listen, resume, serving
from vhea_helpers import (  # noqa: F401  (datapath: a fixture)
    BCAST,
    MAC_A,
    MAC_B,
    MAC_C,
    datapath,
    frame,
    frontend,
    receive_n,
    running_server,
    wait_for,
)

from vhea.cli import main
from vhea.frontend import Frontend


def ask(server, **req) -> dict:
    return server.control_request(json.dumps(req).encode())


def guest_maps() -> int:
    """Mappings of the test front-ends' guest memory in this process (front-ends' own + the back-end's)."""
    with open("/proc/self/maps") as f:
        return sum("vhea-frontend-guest" in line for line in f)


@pytest.mark.usefixtures("datapath")
def test_link_down_closes_the_connection_and_serves_none_until_up(sockdir):
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b, frontend(server, "c") as c:
        for fe in (a, b, c):
            fe.handshake()
            fe.post_rx()
        exchange(a, b, 1)
        maps = guest_maps()
        r = ask(server, cmd="link-set", port="a", up=False)
        assert r == {"ok": True, "port": "a", "link": "down", "emulated": False, "was_connected": True,
                     "connection": "closed: link down"}
        assert a.closed_by_peer()  # what QEMU sees: its chardev closes, it sets the NIC's link down
        assert wait_for(lambda: guest_maps() == maps - 1)  # the back-end's mapping of a's memory is gone
        st = server.stats()["ports"]["a"]
        assert st["link"] == "down" and not st["connected"] and st["connection"] == "closed: link down"
        # a new connection (QEMU's reconnect=1 retry) is closed unserved while the link is down
        for _ in range(2):
            retry = Frontend(server.ports["a"].path)
            try:
                retry.connect()
                assert retry.closed_by_peer()
            finally:
                retry.close()
        assert wait_for(lambda: server.stats()["ports"]["a"]["refused_link_down"] == 2)
        assert server.ports["a"].conn is None
        # frames from other ports to a: link_down drops; b and c keep forwarding
        receive_n(c, 99, timeout=0.2)  # what was flooded to c before
        b.send_frame(frame(MAC_A, MAC_B, 10))  # a's MAC was forgotten with its connection: flooded
        assert receive_n(c, 1) == [frame(MAC_A, MAC_B, 10)]
        assert wait_for(lambda: server.stats()["ports"]["a"]["drops"].get("link_down") == 1)
        b.send_frame(frame(BCAST, MAC_B, 11))  # flooded: c gets it, a counts it
        assert receive_n(c, 1) == [frame(BCAST, MAC_B, 11)]
        assert wait_for(lambda: server.stats()["ports"]["a"]["drops"].get("link_down") == 2)
        c.send_frame(frame(MAC_B, MAC_C, 12))
        assert len(receive_n(b, 1)) == 1
        # link up: the next connection is served; the front-end replays the handshake and traffic resumes
        r = ask(server, cmd="link-set", port="a", up=True)
        assert r["ok"] and r["link"] == "up" and r["connection"] == "listening"
        resume(a)
        a.post_rx()
        assert wait_for(lambda: server.ports["a"].conn is not None)
        exchange(a, b, 20)
        st = server.stats()["ports"]["a"]
        assert st["link"] == "up" and st["connected"] and st["connection"] == "connected"
        assert st["link_changes"] == 2


def test_link_down_twice_and_up_twice_are_harmless(sockdir):
    with running_server(sockdir, ["a", "b"]) as server:
        assert ask(server, cmd="link-set", port="a", up=False)["was_connected"] is False
        assert ask(server, cmd="link-set", port="a", up=False)["connection"] == "closed: link down"
        assert ask(server, cmd="link-set", port="a", up=True)["connection"] == "listening"
        assert ask(server, cmd="link-set", port="a", up=True)["ok"]
        assert server.stats()["ports"]["a"]["link_changes"] == 2
        with frontend(server, "a") as a, frontend(server, "b") as b:
            a.handshake()
            b.handshake()
            b.post_rx()
            a.post_rx()
            exchange(a, b, 1)


def test_client_role_does_not_reconnect_while_link_down(sockdir, caplog, monkeypatch):
    from vhea.server import session as server_module

    monkeypatch.setattr(server_module, "RECONNECT_S", 0.1)
    caplog.set_level(logging.INFO, logger="vhea.server")
    path_b = os.path.join(sockdir, "b.sock")
    lsock = listen(path_b)
    try:
        with serving(sockdir, ["a", "b"], client_ports=("b",)) as server:
            a = Frontend(server.ports["a"].path)
            b = accept_frontend(lsock, path_b)
            try:
                a.handshake()
                b.handshake()
                a.post_rx()
                b.post_rx()
                exchange(a, b, 1)
                assert ask(server, cmd="link-set", port="b", up=False)["was_connected"]
                assert b.closed_by_peer()
                lsock.settimeout(0.6)  # several reconnect intervals: vhea must not come
                with pytest.raises(TimeoutError):
                    lsock.accept()
                assert server.stats()["ports"]["b"]["connection"] == "closed: link down"
                ask(server, cmd="link-set", port="b", up=True)
                lsock.settimeout(15)
                sock, _ = lsock.accept()
                sock.settimeout(15)
                resume(b, sock)
                b.post_rx()
                exchange(a, b, 10)
            finally:
                a.close()
                b.close()
    finally:
        lsock.close()
        if os.path.exists(path_b):
            os.unlink(path_b)


def test_emulated_link_down_keeps_the_connection_and_drops(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        a.post_rx()
        b.post_rx()
        r = ask(server, cmd="link-set", port="b", up=False, emulate=True)
        assert r["ok"] and r["emulated"] and r["connection"] == "connected"
        assert not b.closed_by_peer(0.3)
        a.send_frame(frame(BCAST, MAC_A, 1))  # towards b: dropped at b
        b.send_frame(frame(BCAST, MAC_B, 2))  # from b: dropped at b
        assert wait_for(lambda: server.stats()["ports"]["b"]["drops"].get("link_down") == 2)
        st = server.stats()["ports"]["b"]
        assert st["link"] == "down" and st["link_emulated"] and st["connected"]
        assert b.receive() == [] and a.receive() == []
        # from emulated to a real link down: now the connection closes
        assert ask(server, cmd="link-set", port="b", up=False)["was_connected"]
        assert b.closed_by_peer()
        ask(server, cmd="link-set", port="b", up=True)
        assert not server.stats()["ports"]["b"]["link_emulated"]


@pytest.mark.parametrize("req, msg", [
    ({"port": "z", "up": False}, "unknown port 'z'; ports: a, b"),
    ({"port": 1, "up": False}, "unknown port 1"),
    ({"up": False}, "unknown port None"),
    ({"port": "a"}, "link-set needs up: true or false"),
    ({"port": "a", "up": "no"}, "link-set needs up: true or false"),
    ({"port": "a", "up": 0}, "link-set needs up: true or false"),
    ({"port": "a", "up": False, "emulate": "yes"}, "emulate must be true or false"),
    ({"port": "a", "up": True, "emulate": True}, "emulate goes with up: false"),
    ({"port": "a", "up": False, "speed": 10}, "unknown field(s) speed"),
])
def test_link_set_errors_change_nothing(sockdir, req, msg):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        a.post_rx()
        b.post_rx()
        r = ask(server, cmd="link-set", **req)
        assert r == {"error": r["error"]} and msg in r["error"], r
        assert server.ports["a"].link_up and server.ports["a"].conn is not None
        exchange(a, b, 1)


def test_link_garbage_on_the_control_socket(sockdir):
    with running_server(sockdir, ["a", "b"]) as server:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(server.control_path)
        f = s.makefile("rwb")
        for line in (b'{"cmd": "link-set", "port": ["a"], "up": false}', b'{"cmd": "link-set"', b'[1]',
                     b'{"cmd": "link-set", "port": "a", "up": null}'):
            f.write(line + b"\n")
            f.flush()
            assert "error" in json.loads(f.readline())
        s.close()
        assert server.ports["a"].link_up


def test_cli_link(sockdir, capsys):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a:
        a.handshake()
        assert main(["link", "down", "--socket-dir", sockdir, "--port", "a"]) == 0
        out = capsys.readouterr().out
        assert "port a: link down (vhost-user connection closed: the guest sees no carrier)" in out
        assert main(["stats", "--json", "--socket-dir", sockdir]) == 0
        st = json.loads(capsys.readouterr().out)["ports"]["a"]
        assert (st["link"], st["connection"], st["link_emulated"]) == ("down", "closed: link down", False)
        assert main(["stats", "--socket-dir", sockdir]) == 0
        assert "down" in capsys.readouterr().out
        assert main(["link", "up", "--socket-dir", sockdir, "--port", "a"]) == 0
        assert "port a: link up (listening)" in capsys.readouterr().out
        assert main(["link", "down", "--emulate", "--socket-dir", sockdir, "--port", "b"]) == 0
        assert "link down (emulated" in capsys.readouterr().out
        assert main(["stats", "--json", "--socket-dir", sockdir]) == 0
        st = json.loads(capsys.readouterr().out)["ports"]["b"]
        assert (st["link"], st["connection"], st["link_emulated"]) == ("down", "listening", True)
        assert main(["link", "up", "--emulate", "--socket-dir", sockdir, "--port", "b"]) == 2
        assert "--emulate goes with 'down'" in capsys.readouterr().err
        assert main(["link", "down", "--socket-dir", sockdir, "--port", "z"]) != 0
        assert "unknown port 'z'" in capsys.readouterr().err
        assert main(["link", "down", "--json", "--socket-dir", sockdir, "--port", "b"]) == 0
        assert json.loads(capsys.readouterr().out)["link"] == "down"
        assert server.ports["b"].conn is None

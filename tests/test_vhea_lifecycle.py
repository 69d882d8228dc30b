"""Lifecycle of the device model without a VM: vhea in the vhost-user client role (the front-end listens, as
QEMU does with `server=on`) and its reconnect loop, ports added and removed at run time, and a back-end
restart that front-ends survive by reconnecting and resuming their rings where they were (as QEMU does with
`reconnect=1`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator

from vhea_helpers import BCAST, MAC_A, MAC_B, MAC_C, frame, receive_n, wait_for
from vhea_helpers import serving as serve_in_thread

from vhea import cli, control
from vhea.frontend import Frontend
from vhea.protocol import (
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    Request,
    VringAddr,
    VringState,
    bit,
)
from vhea.server import Server


@contextlib.contextmanager
def serving(sockdir: str, ports: list[str], client_ports: tuple[str, ...] = ()) -> Iterator[Server]:
    server = Server(sockdir, ports, client_ports=client_ports, control=control)
    server.bind()
    with serve_in_thread(server, "vhea-lifecycle"):
        yield server


def listen(path: str) -> socket.socket:
    """What QEMU does with `-chardev socket,path=P,server=on,wait=off`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    s.settimeout(15)
    return s


def accept_frontend(lsock: socket.socket, path: str) -> Frontend:
    sock, _ = lsock.accept()
    sock.settimeout(15)
    fe = Frontend(path)
    fe.sock = sock
    return fe


def resume(fe: Frontend, sock: socket.socket | None = None) -> None:
    """The handshake QEMU sends again after a reconnect: same memory, rings resume at the used index it
    read from the ring (its last_avail_idx after a GET_VRING_BASE that could not be done)."""
    for r in fe.rings:
        for fd in (r.kick, r.call, r.err):
            if fd >= 0:
                os.close(fd)
        r.kick = r.call = r.err = -1
    if fe.sock is not None:
        fe.sock.close()
    fe.sock = sock
    if sock is None:
        fe.connect()
    offered = fe.get_u64(Request.GET_FEATURES)
    assert offered & fe.features == fe.features
    fe.protocol_features = 0
    if offered & bit(VHOST_USER_F_PROTOCOL_FEATURES):
        proto = fe.get_u64(Request.GET_PROTOCOL_FEATURES)
        fe.send(Request.SET_PROTOCOL_FEATURES, U64.pack(proto))
        fe.protocol_features = proto
    fe.call(Request.SET_OWNER)
    fe.call(Request.SET_FEATURES, U64.pack(fe.features))
    fe.call(Request.SET_MEM_TABLE, fe.memory_table().pack(), [fe.memfd])
    for r in fe.rings:
        used = fe.mem16[(r.used + 2) // 2]
        fe.call(Request.SET_VRING_NUM, VringState(r.index, r.num).pack())
        fe.call(Request.SET_VRING_BASE, VringState(r.index, used).pack())
        fe.call(Request.SET_VRING_ADDR, VringAddr(r.index, 0, fe.uva(r.desc), fe.uva(r.used),
                                                  fe.uva(r.avail), 0).pack())
        r.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        r.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        r.err = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fe.call(Request.SET_VRING_CALL, U64.pack(r.index), [r.call])
        fe.call(Request.SET_VRING_ERR, U64.pack(r.index), [r.err])
        fe.call(Request.SET_VRING_KICK, U64.pack(r.index), [r.kick])
        if fe.features & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            fe.call(Request.SET_VRING_ENABLE, VringState(r.index, 1).pack())


def exchange(a: Frontend, b: Frontend, tag: int) -> None:
    fa, fb = frame(MAC_B, MAC_A, tag), frame(MAC_A, MAC_B, tag + 1)
    a.send_frame(fa)
    assert receive_n(b, 1) == [fa]
    b.send_frame(fb)
    assert receive_n(a, 1) == [fb]


# ---- client role ----------------------------------------------------------------------------------------------


def test_client_role_retries_until_the_front_end_listens_then_forwards(sockdir, caplog):
    caplog.set_level(logging.INFO, logger="vhea.server")
    path_b = os.path.join(sockdir, "b.sock")
    with serving(sockdir, ["a", "b"], client_ports=("b",)) as server:
        assert not os.path.exists(path_b)  # vhea does not create a client port's socket
        assert wait_for(lambda: "port b: cannot connect" in caplog.text and "retrying in 1 s" in caplog.text)
        lsock = listen(path_b)  # the front-end comes up late: the next retry finds it
        try:
            b = accept_frontend(lsock, path_b)
            a = Frontend(server.ports["a"].path)
            try:
                a.handshake()
                b.handshake()
                a.post_rx()
                b.post_rx()
                exchange(a, b, 1)
                assert "port b: connected to the front-end" in caplog.text
                st = server.stats()["ports"]
                assert st["a"]["connected"] and st["b"]["connected"]
                assert st["b"]["from_guest_frames"] == 1 and st["b"]["to_guest_frames"] == 1
            finally:
                a.close()
                b.close()
        finally:
            lsock.close()
            os.unlink(path_b)
    assert not os.path.exists(server.ports["a"].path)


def test_client_role_reconnects_after_the_front_end_closes(sockdir, caplog):
    caplog.set_level(logging.INFO, logger="vhea.server")
    path_b = os.path.join(sockdir, "b.sock")
    lsock = listen(path_b)
    try:
        with serving(sockdir, ["a", "b"], client_ports=("b",)) as server:
            a = Frontend(server.ports["a"].path)
            try:
                a.handshake()
                a.post_rx()
                for round_ in range(3):
                    b = accept_frontend(lsock, path_b)
                    try:
                        b.handshake()
                        b.post_rx()
                        exchange(a, b, 10 * round_)
                    finally:
                        b.close()  # the front-end (QEMU) goes away; vhea frees the port and reconnects
                    assert wait_for(lambda: server.ports["b"].handler is None, timeout=15)
                assert caplog.text.count("reconnecting to") >= 3
                b = accept_frontend(lsock, path_b)
                b.close()
            finally:
                a.close()
        # while the peer is gone for good, the loop keeps trying, one logged line a second
        lsock.close()
        os.unlink(path_b)
        caplog.clear()
        with serving(sockdir, ["b"], client_ports=("b",)):
            assert wait_for(lambda: caplog.text.count("port b: cannot connect") >= 2, timeout=10)
    finally:
        lsock.close()


def test_serve_cli_connect_flags(sockdir, capsys):
    args = cli.parser().parse_args(["serve", "--socket-dir", sockdir, "--ports", "a,b", "--connect"])
    assert cli.client_ports(args, ["a", "b"]) == ["a", "b"]
    args = cli.parser().parse_args(["serve", "--socket-dir", sockdir, "--ports", "a,b", "--client-ports", "b"])
    assert cli.client_ports(args, ["a", "b"]) == ["b"]
    assert cli.main(["serve", "--socket-dir", sockdir, "--ports", "a,b", "--client-ports", "c"]) == 2
    assert "not in --ports" in capsys.readouterr().err
    assert cli.main(["serve", "--socket-dir", sockdir, "--ports", "a", "--connect", "--client-ports", "a"]) == 2
    assert "not both" in capsys.readouterr().err


# ---- ports added and removed at run time ----------------------------------------------------------------------


def test_port_add_and_del_while_traffic_flows_on_other_ports(sockdir, capsys):
    with serving(sockdir, ["a", "b"]) as server:
        a, b = Frontend(server.ports["a"].path), Frontend(server.ports["b"].path)
        try:
            for fe in (a, b):
                fe.handshake()
                fe.post_rx()
            exchange(a, b, 1)
            assert cli.main(["port", "add", "--socket-dir", sockdir, "--name", "c"]) == 0
            assert "port c added: listening on" in capsys.readouterr().out
            path_c = os.path.join(sockdir, "c.sock")
            assert os.path.exists(path_c)
            c = Frontend(path_c)
            try:
                c.handshake()
                c.post_rx()
                bc = frame(BCAST, MAC_C, 7)
                c.send_frame(bc)  # flooded to a and b, and c's MAC learned
                assert receive_n(a, 1) == [bc] and receive_n(b, 1) == [bc]
                f = frame(MAC_C, MAC_A, 8)
                a.send_frame(f)
                assert receive_n(c, 1) == [f]
                assert any(e["port"] == "c" for e in server.stats()["switch"]["fdb"])
                exchange(a, b, 20)
                assert cli.main(["port", "del", "--socket-dir", sockdir, "--name", "c", "--json"]) == 0
                reply = json.loads(capsys.readouterr().out)
                assert reply == {"ok": True, "port": "c", "was_connected": True}
                assert c.closed_by_peer()
            finally:
                c.close()
            assert not os.path.exists(path_c)
            st = server.stats()
            assert set(st["ports"]) == {"a", "b"}
            assert all(e["port"] != "c" for e in st["switch"]["fdb"])
            assert "c" not in server.switch.ports
            exchange(a, b, 30)  # the other ports never noticed
            # a frame for c's old MAC is flooded to the remaining ports, not to a port that is gone
            f = frame(MAC_C, MAC_A, 40)
            a.send_frame(f)
            assert receive_n(b, 1) == [f]
            # the name can be used again
            assert server.control_request(b'{"cmd": "port-add", "name": "c"}')["ok"] is True
            assert os.path.exists(path_c)
            assert server.control_request(b'{"cmd": "port-del", "name": "c"}')["was_connected"] is False
        finally:
            a.close()
            b.close()


def test_port_add_del_validation(sockdir, capsys):
    with serving(sockdir, ["a"]) as server:
        def ask(req: dict) -> dict:
            return server.control_request(json.dumps(req).encode())

        assert "exists" in ask({"cmd": "port-add", "name": "a"})["error"]
        for bad in ("", "control", "../x", "a b", "x" * 33, 5, None):
            assert "bad port name" in ask({"cmd": "port-add", "name": bad})["error"]
        assert "unknown port 'z'" in ask({"cmd": "port-del", "name": "z"})["error"]
        assert "unknown field" in ask({"cmd": "port-add", "name": "q", "path": "/tmp/x"})["error"]
        assert "connect must be" in ask({"cmd": "port-add", "name": "q", "connect": "yes"})["error"]
        # a live socket of another process at that path is not taken over
        other = listen(os.path.join(sockdir, "busy.sock"))
        try:
            assert "in use" in ask({"cmd": "port-add", "name": "busy"})["error"]
        finally:
            other.close()
            os.unlink(os.path.join(sockdir, "busy.sock"))
        assert set(server.ports) == {"a"} and server.switch.ports == ["a"]
        assert cli.main(["port", "del", "--socket-dir", sockdir, "--name", "nope"]) == 2
        assert "unknown port 'nope'" in capsys.readouterr().err


def test_port_add_in_client_role(sockdir):
    path_c = os.path.join(sockdir, "c.sock")
    lsock = listen(path_c)
    try:
        with serving(sockdir, ["a"]) as server:
            reply = server.control_request(b'{"cmd": "port-add", "name": "c", "connect": true}')
            assert reply["role"] == "client"
            c = accept_frontend(lsock, path_c)
            a = Frontend(server.ports["a"].path)
            try:
                a.handshake()
                c.handshake()
                a.post_rx()
                c.post_rx()
                f = frame(MAC_A, MAC_C, 3)
                c.send_frame(f)
                assert receive_n(a, 1) == [f]
                server.control_request(b'{"cmd": "port-del", "name": "c"}')
                assert c.closed_by_peer()
                assert os.path.exists(path_c)  # the front-end's socket is not vhea's to remove
            finally:
                a.close()
                c.close()
    finally:
        lsock.close()
        os.unlink(path_c)


# ---- back-end restart -----------------------------------------------------------------------------------------


def test_backend_restart_front_ends_reconnect_and_rings_resume(sockdir):
    a = b = None
    with serving(sockdir, ["a", "b"]) as server:
        a, b = Frontend(server.ports["a"].path), Frontend(server.ports["b"].path)
        for fe in (a, b):
            fe.handshake()
            fe.post_rx()
        for i in range(5):
            exchange(a, b, 2 * i)
    try:
        # the back-end is gone (its sockets too); the front-ends keep their rings and memory
        assert a.closed_by_peer() and b.closed_by_peer()
        a_tx = a.tx_ring()
        assert a_tx.avail_idx == 5
        # frames queued while nobody serves the ring wait in it
        queued = frame(MAC_B, MAC_A, 100)
        a.send_frame(queued, kick=False)
        with serving(sockdir, ["a", "b"]) as server:
            resume(b)  # b first: a's queued frame goes out as soon as a's ring starts
            resume(a)
            # the new back-end took the rings at the used index the front-ends had (5), not at 0, so the
            # frame queued in the gap goes out, and traffic flows both ways again
            assert receive_n(b, 1) == [queued]
            ring = server.ports["a"].handler.device.rings[1]
            assert (ring.last_avail_idx, ring.used_idx) == (6, 6)
            for i in range(5):
                exchange(a, b, 50 + 2 * i)
            st = server.stats()["ports"]
            assert st["a"]["from_guest_frames"] == 6 and st["b"]["from_guest_frames"] == 5
            assert st["a"]["drops"] == {} and st["b"]["drops"] == {}
    finally:
        for fe in (a, b):
            if fe is not None:
                fe.close()

"""vhea.tap without a kernel device: the frame formats (pure), the batch reads and the non-blocking writes on a
socketpair standing in for the TAP fd, and the server's tap port driven by hand (the read budget per loop
pass, frames from a tap never held by flow control). test_vhea_tap_netns.py runs the real device."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from test_vhea_offload import gso_hdr, tso_frame
from vhea_helpers import MAC_A, datapath, frame, frontend, serving, wait_for  # noqa: F401  (datapath: the fixture)

from vhea import control, tap
from vhea.frontend import ethernet
from vhea.net import NET_HDR, NET_HDR_LEN
from vhea.offload import (
    VHDR,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP,
    OffloadRequest,
    TxFrame,
)
from vhea.server import Server, tapservice

TAP_MAC = "02:00:00:00:00:99"


def hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return NET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


# ---- names ------------------------------------------------------------------------------------------------------

def test_default_ifname_is_vh_and_the_port_cut_to_ifnamsiz():
    assert tap.default_ifname("peer") == "vh-peer"
    assert tap.default_ifname("a" * 40) == "vh-" + "a" * 12
    assert len(tap.default_ifname("a" * 40)) == tap.MAX_IFNAME == 15


@pytest.mark.parametrize("name,ok", [("vh-peer", True), ("x" * 15, True), ("x" * 16, False), ("", False),
                                     ("a b", False), ("a/b", False), (".", False), (None, False), ("eth0.1", True)])
def test_ifname_rule(name, ok):
    assert tap.is_ifname(name) is ok


def test_create_refuses_a_bad_name_before_touching_the_kernel():
    with pytest.raises(ValueError, match="bad interface name"):
        tap.TapDevice.create("x" * 16)


# ---- the frame formats ----------------------------------------------------------------------------------------

def test_header_of_a_plain_frame_is_zero():
    assert tap.tap_header(b"\x00" * 60) == bytes(NET_HDR_LEN) == tap.PLAIN_TAP_HDR


def test_header_of_a_checksum_frame_carries_the_request():
    f = TxFrame(bytes(100))
    f.vhdr = OffloadRequest(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 54, 0, 34, 16)
    assert tap.tap_header(f) == hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 54, 0, 34, 16)


def test_header_of_a_gso_frame_asks_the_kernel_to_complete_the_tcp_checksum():
    f = TxFrame(tso_frame(os.urandom(5000)))
    f.vhdr = OffloadRequest(0, VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 0, 0)
    f.l4 = 34
    assert tap.tap_header(f) == hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 34, 16)


def test_parse_plain_and_data_valid_frames_are_plain_bytes():
    f = frame(MAC_A, TAP_MAC, 1)
    for h in (hdr(), hdr(VIRTIO_NET_HDR_F_DATA_VALID)):
        got = tap.parse_frame(h + f)
        assert got == (f, None) and type(got.frame) is bytes


def test_parse_a_gso_frame_keeps_its_offload_request():
    original = tso_frame(os.urandom(10 * 1448))
    got = tap.parse_frame(gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448) + original)
    assert got.drop is None and isinstance(got.frame, TxFrame) and got.frame == original
    assert got.frame.vhdr == OffloadRequest(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 34, 16)
    assert got.frame.l4 == 34  # validated: ready for segment_tcp


HOSTILE = [
    ("runt", hdr() + bytes(13), "tap_runt"),
    ("header only", hdr(), "tap_runt"),
    ("shorter than a header", b"\x01\x02", "tap_runt"),
    ("oversize", hdr() + bytes(65535 + 18 + 1), "tap_oversize"),
    ("csum past the end", hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 100, 16) + bytes(60), "tx_csum_bad_offset"),
    ("gso size 1", gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1) + tso_frame(bytes(60000)), "tx_gso_bad_size"),
    ("gso size 0", gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 0) + tso_frame(bytes(3000)), "tx_gso_bad_size"),
    ("udp gso (not offered)", gso_hdr(VIRTIO_NET_HDR_GSO_UDP, 1448) + tso_frame(bytes(3000)), "tx_gso_bad_type"),
    ("ecn (not offered)", gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 1448) + tso_frame(bytes(3000)),
     "tx_gso_not_negotiated"),
    ("tcp gso on a non-IP frame", gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448) + ethernet(MAC_A, TAP_MAC, bytes(3000)),
     "tx_offload_not_ip"),
]


@pytest.mark.parametrize("name,data,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_frames_from_the_tap_are_dropped_with_a_reason(name, data, reason):
    got = tap.parse_frame(data)
    assert got.frame is None
    assert got.drop == reason


# ---- the device's I/O on a stand-in fd ---------------------------------------------------------------------------

@pytest.fixture
def fake_tap():
    """A TapDevice on one end of a SOCK_SEQPACKET pair (one read, one frame, as a TAP fd); the peer end."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    dev = tap.TapDevice("fake0", ours.detach())
    yield dev, peer
    dev.close()
    peer.close()


def test_read_batch_stops_at_the_budget_and_says_more(fake_tap):
    dev, peer = fake_tap
    frames = [frame(MAC_A, TAP_MAC, i) for i in range(10)]
    for f in frames:
        peer.send(hdr() + f)
    peer.send(hdr() + bytes(5))  # a runt among them
    first = dev.read_batch(4)
    assert first.frames == frames[:4] and first.more is True and first.drops == {}
    rest = dev.read_batch(100)
    assert rest.frames == frames[4:] and rest.more is False and rest.drops == {"tap_runt": 1}


def test_write_puts_the_header_in_front_and_a_full_queue_is_a_drop_not_a_wait(fake_tap):
    dev, peer = fake_tap
    f = frame(TAP_MAC, MAC_A, 7)
    assert dev.write(f) is None
    assert peer.recv(70000) == bytes(NET_HDR_LEN) + f
    n = 0
    while (reason := dev.write(f)) is None:  # fill the socket buffer
        n += 1
        assert n < 1_000_000
    assert reason == "tap_full"


# ---- the server's tap port, driven by hand -------------------------------------------------------------------

@pytest.fixture
def server_with_fake_tap(sockdir, monkeypatch):
    """A Server with port a (vhost-user) and tap port p on a stand-in fd; the test runs the loop (run_once)."""
    peers: list[socket.socket] = []

    def create(ifname: str) -> tap.TapDevice:
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        peers.append(peer)
        return tap.TapDevice(ifname, ours.detach())

    monkeypatch.setattr(tapservice.TapDevice, "create", staticmethod(create))
    server = Server(sockdir, ["a"], control=control, tap_ports={"p": None}, flow_control=True)
    server.bind()
    try:
        yield server, peers[0]
    finally:
        if server.sel.get_map() is not None:  # not closed by serve_forever (serving)
            server.close()
        for p in peers:
            p.close()


def test_a_tap_is_read_at_most_tap_budget_frames_per_loop_pass(server_with_fake_tap):
    server, peer = server_with_fake_tap
    assert server.ports["p"].ifname == "vh-p" and server.stats()["ports"]["p"]["kind"] == "tap"
    assert server.ports["a"].pause and not server.ports["p"].pause  # --flow-control: guest ports only
    n = 3 * tapservice.TAP_BUDGET + 5
    for i in range(n):
        peer.send(hdr() + frame(MAC_A, TAP_MAC, i))
    seen = []
    for _ in range(4):
        server.run_once(0)
        seen.append(server.ports["p"].from_guest_frames)
    b = tapservice.TAP_BUDGET
    assert seen == [b, 2 * b, 3 * b, n]
    assert server.ports["a"].drops == {"not_connected": n}


@pytest.mark.usefixtures("datapath")
def test_frames_from_a_tap_are_dropped_not_held_when_the_guest_has_no_buffers(server_with_fake_tap):
    """Flow control holds a guest's frames and pauses its tx queue; a tap has no tx queue to pause."""
    server, peer = server_with_fake_tap
    with serving(server), frontend(server, "a") as fe:
        fe.handshake()
        fe.post_rx(2)
        assert server.ports["a"].pause
        for i in range(5):
            peer.send(hdr() + frame(MAC_A, TAP_MAC, i))
        assert wait_for(lambda: server.stats()["ports"]["a"]["drops"].get("rx_no_buffers") == 3)
        st = server.stats()["ports"]["a"]
        assert st["to_guest_frames"] == 2 and st["drops"] == {"rx_no_buffers": 3}
        assert st["pause"]["held_frames"] == 0 and not server._flow
        assert [f[14:18] for f in fe.receive()] == [struct.pack("!I", i) for i in range(2)]


@pytest.mark.usefixtures("datapath")
def test_frames_to_a_tap_are_written_with_either_datapath(server_with_fake_tap):
    server, peer = server_with_fake_tap
    with serving(server), frontend(server, "a") as fe:
        fe.handshake()
        frames = [ethernet("ff:ff:ff:ff:ff:ff", MAC_A, bytes([i]) * 50) for i in range(3)]
        for f in frames:
            fe.send_frame(f)
        got: list[bytes] = []
        peer.setblocking(False)

        def pump() -> bool:
            try:
                while True:
                    got.append(peer.recv(70000))
            except BlockingIOError:
                pass
            return len(got) >= 3

        assert wait_for(pump)
        assert got == [bytes(NET_HDR_LEN) + f for f in frames]
        assert server.stats()["ports"]["p"]["to_guest_frames"] == 3


def test_vhdr_struct_is_the_first_ten_bytes_of_the_tap_header():
    assert VHDR.size == 10 and NET_HDR_LEN == 12


def test_a_write_to_a_device_that_is_down_is_a_tap_down_drop(monkeypatch):
    def eio(fd, buffers):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tap.os, "writev", eio)
    assert tap.TapDevice("x", 99).write(bytes(60)) == "tap_down"


def test_queue_settings_are_refused_for_a_tap_port(server_with_fake_tap):
    server, _peer = server_with_fake_tap
    for req in ({"cmd": "rule-add", "port": "p", "proto": "tcp", "dport": 5001, "queue": 0},
                {"cmd": "coalesce-set", "port": "p", "max_frames": 8, "max_usecs": 10},
                {"cmd": "rate-set", "port": "p", "rate_bps": 10**9},
                {"cmd": "pause-set", "port": "p", "on": True},
                {"cmd": "rss-set", "port": "p", "queues": 1}):
        reply = control.handle(server, req)
        assert "is a tap port" in reply["error"], (req, reply)
    assert control.handle(server, {"cmd": "link-set", "port": "p", "up": False}).get("ok") is True
    assert server.ports["p"].link_up is False
    assert control.handle(server, {"cmd": "rule-list", "port": "p"})["ok"] is True

"""Tap ports on a real kernel, no VM: vhea with a tap port and a vhost-user port (driven by vhea's own Python
front-end), the TAP device moved into a network namespace made by the test (and removed after it), and the
namespace side run as `ip netns exec NS python3 -c ...` subprocesses (AF_PACKET sockets).

Skipped when /dev/net/tun or `ip netns` is not usable (not root, no tun module, a container without them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from test_vhea_offload import NO_GUEST_OFFLOADS, check_segments, gso_hdr, tso_frame
from vhea_helpers import (
    MAC_A,
    datapath,  # noqa: F401  (the fixture)
    frontend,
    receive_n,
    running_server,
    wait_for,
)

from vhea import ctl
from vhea.frontend import ethernet
from vhea.offload import VHDR, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4

VHEA = [sys.executable, "-m", "vhea.cli"]
ETHERTYPE = 0x88B5


def _netns_usable() -> str | None:
    """Why the tests cannot run here, or None."""
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"vhtap-probe-{uuid.uuid4().hex[:8]}"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        return f"`ip netns add` fails: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as e:
        return f"cannot open /dev/net/tun: {e}"
    os.close(fd)
    return None


WHY_NOT = _netns_usable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"tap ports need a kernel with netns and tun: {WHY_NOT}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"ip {' '.join(args)}: {p.stderr}"
    return p


@pytest.fixture
def netns():
    """A network namespace of this test only; removed after it, with whatever was moved into it."""
    name = f"vhtap-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "del", name, check=False)
        assert name not in ip("netns", "list").stdout


@pytest.fixture
def ifname():
    name = f"vht{uuid.uuid4().hex[:10]}"  # 13 characters: under IFNAMSIZ
    yield name
    assert ip("link", "show", name, check=False).returncode != 0, f"{name} left behind"


# ---- the namespace side: python3 in the namespace ----------------------------------------------------------

NS_PRELUDE = """
import json, socket, sys, time
IFNAME = sys.argv[1]
def sock(vnet=False, proto=0x0003):  # ETH_P_ALL, or only frames of one ethertype
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    if vnet:
        s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
    s.bind((IFNAME, proto))
    return s
"""

#: receive frames of an ethertype until `count` came or `timeout` passed; prints their hex as JSON
NS_RECEIVE = NS_PRELUDE + """
ethertype, count, timeout = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = sock(proto=ethertype)
s.settimeout(0.2)
print("ready", flush=True)
got, end = [], time.monotonic() + timeout
while len(got) < count and time.monotonic() < end:
    try:
        data, addr = s.recvfrom(70000)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or int.from_bytes(data[12:14], "big") != ethertype:
        continue
    got.append(data.hex())
print(json.dumps(got), flush=True)
"""

#: send the frames given as a JSON list of hex on stdin (with a virtio_net_hdr in front when argv[2] is "vnet")
NS_SEND = NS_PRELUDE + """
s = sock(vnet=sys.argv[2] == "vnet")
for h in json.load(sys.stdin):
    s.send(bytes.fromhex(h))
print(json.dumps("sent"), flush=True)
"""

#: send broadcast frames as fast as it can for argv[2] seconds; prints how many went
NS_FLOOD = NS_PRELUDE + """
seconds = float(sys.argv[2])
s = sock()
frame = bytes.fromhex("ffffffffffff") + bytes(6) + (0x88B6).to_bytes(2, "big") + bytes(46)
n, end = 0, time.monotonic() + seconds
print("ready", flush=True)
while time.monotonic() < end:
    for _ in range(100):
        try:
            s.send(frame)
            n += 1
        except OSError:
            pass
print(n, flush=True)
"""


def in_ns(ns: str, script: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(script), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def started(proc: subprocess.Popen) -> subprocess.Popen:
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"namespace side did not start: {line!r} {proc.stderr.read()}"
    return proc


def finish(proc: subprocess.Popen, stdin: str | None = None, timeout: float = 30):
    out, err = proc.communicate(stdin, timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def move_into(ns: str, ifname: str, addr: str = "10.77.0.2/24") -> str:
    """What the testbed does with the device: into the namespace, addressed, up; returns its MAC."""
    ip("link", "set", ifname, "netns", ns)
    ip("-n", ns, "addr", "add", addr, "dev", ifname)
    ip("-n", ns, "link", "set", ifname, "up")
    ip("-n", ns, "link", "set", "lo", "up")
    return json.loads(ip("-n", ns, "-j", "link", "show", ifname).stdout)[0]["address"]


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


# ---- the tests ------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("datapath")
def test_frames_both_ways_between_the_namespace_and_a_guest_port(sockdir, netns, ifname):
    with running_server(sockdir, ["a"], tap_ports={"p": ifname}) as server, frontend(server, "a") as fe:
        assert ip("link", "show", ifname).stdout  # created in vhea's namespace, DOWN, no address
        assert "state DOWN" in ip("link", "show", ifname).stdout
        fe.handshake()
        fe.post_rx()
        tap_mac = move_into(netns, ifname)
        # namespace -> guest port
        frames = [ethernet(MAC_A, tap_mac, bytes([i]) * (46 + i)) for i in range(20)]
        finish(in_ns(netns, NS_SEND, ifname, "plain"), json.dumps([f.hex() for f in frames]))
        got = [f for f in receive_n(fe, 20) if f[12:14] == ETHERTYPE.to_bytes(2, "big")]
        assert got == frames
        # guest port -> namespace (the tap's MAC learned from the frames above: unicast)
        rx = started(in_ns(netns, NS_RECEIVE, ifname, str(ETHERTYPE), "20", "10"))
        back = [ethernet(tap_mac, MAC_A, bytes([i]) * (46 + 3 * i)) for i in range(20)]
        for f in back:
            fe.send_frame(f)
        assert [bytes.fromhex(h) for h in finish(rx)] == back
        st = server.stats()["ports"]
        assert st["p"]["kind"] == "tap" and st["a"]["kind"] == "vhost-user"
        assert st["p"]["ifname"] == ifname and st["p"]["connected"] is True
        assert st["p"]["to_guest_frames"] == 20 and st["p"]["to_guest_bytes"] == sum(map(len, back))
        assert st["p"]["from_guest_frames"] >= 20  # and whatever the namespace's kernel sent (IPv6 DAD, ...)
        assert st["a"]["from_guest_frames"] == 20
        assert {"mac": tap_mac, "port": "p"} in server.stats()["switch"]["fdb"]


def test_the_namespace_kernels_arp_is_seen_by_the_guest_port(sockdir, netns, ifname):
    """The kernel's own traffic (ARP before a UDP datagram) reaches the guest port as frames from the tap port."""
    with running_server(sockdir, ["a"], tap_ports={"p": ifname}) as server, frontend(server, "a") as fe:
        fe.handshake()
        fe.post_rx()
        move_into(netns, ifname)
        subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", "import socket; socket.socket("
                        "socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('10.77.0.1', 9))"], check=True)
        got: list[bytes] = []
        assert wait_for(lambda: bool(got.extend(fe.receive())) or any(f[12:14] == b"\x08\x06" for f in got))
        arp = next(f for f in got if f[12:14] == b"\x08\x06")
        assert arp[38:42] == bytes([10, 77, 0, 1])  # who has 10.77.0.1
        assert server.stats()["ports"]["p"]["from_guest_frames"] >= 1


@pytest.mark.usefixtures("datapath")
def test_tso_frame_from_the_guest_port_arrives_whole_in_the_namespace(sockdir, netns, ifname):
    with running_server(sockdir, ["a"], tap_ports={"p": ifname}) as server, frontend(server, "a") as fe:
        fe.handshake()
        tap_mac = move_into(netns, ifname)
        rx = started(in_ns(netns, NS_RECEIVE, ifname, str(0x0800), "1", "10"))
        payload = os.urandom(30000)
        original = mac_bytes(tap_mac) + mac_bytes(MAC_A) + tso_frame(payload)[12:]
        fe.send_frame(original, vhdr=gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448))
        got = [bytes.fromhex(h) for h in finish(rx)]
        # the kernel got one 30 KB TCP frame (its checksum left to complete: CHECKSUM_PARTIAL), header and payload
        # as the guest wrote them
        assert len(got) == 1 and len(got[0]) == len(original)
        assert got[0][:50] == original[:50] and got[0][52:] == original[52:]  # all but the TCP checksum field
        assert got[0][-len(payload):] == payload
        st = server.stats()["ports"]
        assert st["p"]["to_guest_frames"] == 1 and st["p"]["drops"] == {}


@pytest.mark.usefixtures("datapath")
def test_gso_frame_from_the_namespace_is_segmented_for_a_guest_without_tso(sockdir, netns, ifname):
    """A whole TCP frame with a virtio_net_hdr from the namespace (PACKET_VNET_HDR): the guest port, which did not
    negotiate TSO, gets correct segments with complete checksums, whether the kernel or vhea cut it."""
    with running_server(sockdir, ["a"], tap_ports={"p": ifname}) as server, frontend(server, "a") as fe:
        fe.handshake(want_features=NO_GUEST_OFFLOADS)
        fe.post_rx()
        tap_mac = move_into(netns, ifname)
        payload = os.urandom(10 * 1448)
        original = mac_bytes(MAC_A) + mac_bytes(tap_mac) + tso_frame(payload)[12:]
        vhdr = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448)[:10]  # PACKET_VNET_HDR: the 10-byte header
        finish(in_ns(netns, NS_SEND, ifname, "vnet"), json.dumps([(vhdr + original).hex()]))
        got: list = []
        wait_for(lambda: bool(got.extend(fe.receive_with_header())) or
                 sum(1 for _, f in got if f[12:14] == b"\x08\x00") >= 10)
        segs = [f for h, f in got if f[12:14] == b"\x08\x00"]
        assert all(h[:6] == (0, 0, 0, 0, 0, 0) for h, f in got if f[12:14] == b"\x08\x00")
        check_segments(segs, original, 1448, v6=False)
        st = server.stats()["ports"]["a"]
        assert st["queues"][0]["frames"] >= 10  # the segments (to_guest_frames counts the frame once)


@pytest.mark.usefixtures("datapath")
def test_frame_the_kernel_refuses_is_a_counted_drop(sockdir, netns, ifname):
    """A checksum-offload frame whose header length runs past its end: the TAP device refuses it (EINVAL);
    vhea counts tap_rejected and keeps forwarding."""
    with running_server(sockdir, ["a"], tap_ports={"p": ifname}) as server, frontend(server, "a") as fe:
        fe.handshake()
        tap_mac = move_into(netns, ifname)
        rx = started(in_ns(netns, NS_RECEIVE, ifname, str(ETHERTYPE), "1", "10"))
        bad = ethernet(tap_mac, MAC_A, bytes(100), ethertype=0x0800)
        fe.send_frame(bad, vhdr=VHDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 60000, 0, 34, 16))
        good = ethernet(tap_mac, MAC_A, bytes(range(64)))
        fe.send_frame(good)
        assert [bytes.fromhex(h) for h in finish(rx)] == [good]
        st = server.stats()["ports"]["p"]
        assert st["drops"] == {"tap_rejected": 1} and st["to_guest_frames"] == 1


@pytest.mark.usefixtures("datapath")
def test_a_flood_from_the_namespace_does_not_stop_the_guest_port(sockdir, netns, ifname):
    """The tap is read at most TAP_BUDGET frames per loop pass: while the namespace floods broadcasts, the guest
    port's frames still go out and the control socket answers."""
    with running_server(sockdir, ["a"], tap_ports={"p": ifname}) as server, frontend(server, "a") as fe:
        fe.handshake()
        tap_mac = move_into(netns, ifname)
        rx = started(in_ns(netns, NS_RECEIVE, ifname, str(ETHERTYPE), "100", "20"))
        flood = started(in_ns(netns, NS_FLOOD, ifname, "8"))
        assert wait_for(lambda: server.stats()["ports"]["p"]["from_guest_frames"] > 1000, 10)
        t0 = time.monotonic()
        frames = [ethernet(tap_mac, MAC_A, i.to_bytes(4, "big") + bytes(60)) for i in range(100)]
        for f in frames:
            assert wait_for(lambda: bool(fe.reclaim(fe.tx_ring())) or len(fe.tx_ring().free) > 8, 5)
            fe.send_frame(f)
        reply = ctl.query(sockdir, {"cmd": "stats"}, timeout=5)
        assert reply["ports"]["p"]["kind"] == "tap"
        assert flood.poll() is None, "the flood ended before the guest port's frames were taken"
        got = [bytes.fromhex(h) for h in finish(rx)]
        elapsed = time.monotonic() - t0
        flooded = int(flood.communicate(timeout=30)[0].strip().splitlines()[-1])
        assert got == frames, (f"{len(got)} of 100 frames got through the flood in {elapsed:.1f} s",
                               server.stats()["ports"])
        st = server.stats()["ports"]
        assert flooded > 1000 and st["p"]["from_guest_frames"] > 1000
        assert st["p"]["to_guest_frames"] == 100 and st["a"]["from_guest_frames"] == 100


def test_port_add_and_del_at_run_time_create_and_remove_the_device(sockdir, netns, ifname):
    with running_server(sockdir, ["a"]) as server:
        reply = ctl.query(sockdir, {"cmd": "port-add", "name": "p", "tap": True, "ifname": ifname})
        assert reply == {"ok": True, "port": "p", "kind": "tap", "ifname": ifname}
        assert ip("link", "show", ifname).returncode == 0
        st = ctl.query(sockdir, {"cmd": "stats"})["ports"]
        assert st["p"]["kind"] == "tap" and st["a"]["kind"] == "vhost-user"
        move_into(netns, ifname)  # the fd stays with vhea across the move
        assert ip("-n", netns, "link", "show", ifname).returncode == 0
        assert ctl.query(sockdir, {"cmd": "port-del", "name": "p"})["ok"] is True
        assert "p" not in server.ports
        assert wait_for(lambda: ip("-n", netns, "link", "show", ifname, check=False).returncode != 0)
        bad = ctl.query(sockdir, {"cmd": "port-add", "name": "q", "tap": True, "ifname": "x" * 16})
        assert "bad interface name" in bad["error"]
        both = ctl.query(sockdir, {"cmd": "port-add", "name": "q", "tap": True, "connect": True})
        assert "not both" in both["error"]


def test_serve_tap_port_flag_and_the_port_cli(sockdir, ifname):
    proc = subprocess.Popen([*VHEA, "serve", "--socket-dir", sockdir, "--ports", "a", "--tap-port", f"p={ifname}"],
                            stderr=subprocess.PIPE, text=True)
    other = f"vhq{uuid.uuid4().hex[:10]}"
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(sockdir, "control.sock")) or proc.poll() is not None, 10)
        assert proc.poll() is None, proc.stderr.read()
        assert wait_for(lambda: ip("link", "show", ifname, check=False).returncode == 0)
        st = json.loads(subprocess.run([*VHEA, "stats", "--socket-dir", sockdir, "--json"], capture_output=True,
                                       text=True, check=True).stdout)
        assert st["ports"]["p"]["kind"] == "tap" and st["ports"]["p"]["ifname"] == ifname
        assert st["ports"]["a"]["kind"] == "vhost-user"
        add = subprocess.run([*VHEA, "port", "add", "--socket-dir", sockdir, "--port", "q", "--tap", "--ifname",
                              other], capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
        assert f"TAP device {other}" in add.stdout
        assert ip("link", "show", other).returncode == 0
        table = subprocess.run([*VHEA, "stats", "--socket-dir", sockdir], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "250"})
        assert f"tap {ifname}" in table.stdout
        dele = subprocess.run([*VHEA, "port", "del", "--socket-dir", sockdir, "--port", "q"], capture_output=True,
                              text=True)
        assert dele.returncode == 0, dele.stderr
        assert ip("link", "show", other, check=False).returncode != 0
    finally:
        proc.terminate()
        proc.wait(10)
    assert ip("link", "show", other, check=False).returncode != 0

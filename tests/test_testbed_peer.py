"""testbed.peer: the native peer's network namespace, made, addressed, found and removed for real.

vhea's TAP port is built on another branch: the namespace steps take the device from an injected provider, here
a TAP device the test makes with `ip tuntap add` (vhea's comes DOWN in the host's namespace the same way). One
test asks a real `vhea serve` for the TAP port and skips while this vhea has none.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from rich.console import Console

from testbed import devicemodel, peer, state
from testbed.lifecycle import down, status, up
from testbed.lifecycle.options import UpOptions

FIXTURE_TOPOLOGY = Path(__file__).parent / "fixtures" / "harness" / "topology.json"


def netns_usable() -> str | None:
    """Why this host cannot run the namespace tests (None: it can)."""
    why = peer.unavailable_reason()
    if why:
        return why
    probe = f"isotb-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` fails here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


needs_netns = pytest.mark.skipif(bool(netns_usable()), reason=f"needs network namespaces: {netns_usable()}")


@pytest.fixture
def sdir():
    d = Path(tempfile.mkdtemp(prefix="tbp", dir="/tmp"))
    yield d
    ns = peer.namespace_name(d)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", "dev", peer.interface_name(d)], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def make_tap(ifname: str) -> None:
    """Stands in for vhea's TAP port: a DOWN TAP device of that name in the host's namespace."""
    subprocess.run(["ip", "tuntap", "add", "dev", ifname, "mode", "tap"], check=True, capture_output=True)


def link_in_host(ifname: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", ifname], capture_output=True).returncode == 0


def in_ns(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True).stdout


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def test_names_follow_the_state_dir_and_fit_linux_limits():
    a, b = Path("/tmp/tb-a"), Path("/tmp/tb-b")
    assert peer.namespace_name(a) == peer.namespace_name(Path("/tmp/tb-a/"))
    assert peer.namespace_name(a) != peer.namespace_name(b)
    assert peer.namespace_name(a).startswith("isotb-")
    assert peer.interface_name(a) != peer.interface_name(b)
    assert len(peer.interface_name(a)) <= 15  # IFNAMSIZ - 1
    assert peer.address("10.10.0") == "10.10.0.254"
    assert up.DATA_SUBNET == "10.10.0"  # the guests' subnet, where the peer lives
    assert peer.exec_argv("isotb-x", ["ping", "-c1", "10.10.0.1"]) == [
        "ip", "netns", "exec", "isotb-x", "ping", "-c1", "10.10.0.1"]


def test_topology_with_a_peer_round_trips_and_older_files_load_without_one(tmp_path):
    old = state.Topology.load(FIXTURE_TOPOLOGY)
    assert "peer" not in json.loads(FIXTURE_TOPOLOGY.read_text())
    assert old.peer is None
    old.peer = state.PeerInfo("isotb-1234abcd", "vh-pr-1234abcd", "10.10.0.254", 24, "peer", "02:00:00:00:00:01")
    path = tmp_path / "topology.json"
    old.save(path)
    assert state.Topology.load(path) == old
    assert json.loads(path.read_text())["peer"]["namespace"] == "isotb-1234abcd"


@needs_netns
def test_create_moves_the_device_in_addresses_it_and_remove_leaves_nothing(sdir):
    ns, ifname = peer.namespace_name(sdir), peer.interface_name(sdir)
    info = peer.create(sdir, "10.10.0", make_tap)
    assert (info.namespace, info.interface, info.address, info.prefix_len, info.port) == (
        ns, ifname, "10.10.0.254", 24, "peer")
    assert peer.exists(ns)
    assert not link_in_host(ifname)  # moved, not copied
    addr = in_ns(ns, "ip", "-o", "-4", "address", "show", "dev", ifname)
    assert "10.10.0.254/24" in addr
    link = in_ns(ns, "ip", "-o", "link", "show", "dev", ifname)
    assert "UP" in link.split("<")[1].split(">")[0].split(",")
    assert info.mac and info.mac in link
    assert "UP" in in_ns(ns, "ip", "-o", "link", "show", "dev", "lo")
    routes = in_ns(ns, "ip", "-4", "route")
    assert "10.10.0.0/24" in routes

    assert peer.remove(ns) is True
    assert not peer.exists(ns)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not link_in_host(ifname)  # the device went with the namespace
    assert peer.remove(ns) is False


@needs_netns
def test_the_management_link_reaches_the_namespace_and_goes_with_it(sdir):
    """The veth pair that carries isoperf's control connection: the host's end addressed in the host, the
    peer's in the namespace, a TCP connection across it works, and `remove` leaves no end behind."""
    info = peer.create(sdir, "10.10.0", make_tap)
    host_addr, peer_addr = peer.mgmt_addresses(sdir)
    assert (info.mgmt_host_address, info.mgmt_address) == (host_addr, peer_addr)
    assert ipaddress.IPv4Address(peer_addr) in peer.MGMT_NET
    assert link_in_host(info.mgmt_interface)
    assert f"{host_addr}/30" in subprocess.run(["ip", "-o", "-4", "address", "show", "dev", info.mgmt_interface],
                                               capture_output=True, text=True).stdout
    server = subprocess.Popen(peer.exec_argv(info.namespace, [
        sys.executable, "-c",
        "import socket; s = socket.create_server(('0.0.0.0', 5799)); print('up', flush=True); c, a = s.accept();"
        " c.sendall(a[0].encode())"]), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        with socket.create_connection((peer_addr, 5799), timeout=5) as c:
            assert c.recv(64).decode() == host_addr  # from the host's end, straight across the link
    finally:
        server.kill()
        server.wait()
    assert peer.remove(info.namespace)
    assert not link_in_host(info.mgmt_interface)


def test_management_addresses_are_a_30_per_state_dir(tmp_path):
    a, b = peer.mgmt_addresses(tmp_path / "a"), peer.mgmt_addresses(tmp_path / "b")
    assert a != b
    for host_addr, peer_addr in (a, b):
        net = ipaddress.IPv4Interface(f"{host_addr}/30").network
        assert ipaddress.IPv4Address(peer_addr) in net and net.subnet_of(peer.MGMT_NET)
        assert host_addr != str(net.network_address) and peer_addr != str(net.broadcast_address)


@needs_netns
def test_create_cleans_up_when_the_device_cannot_be_had(sdir):
    def no_device(ifname: str) -> None:
        raise devicemodel.DeviceModelError("vhea said no")

    with pytest.raises(devicemodel.DeviceModelError, match="vhea said no"):
        peer.create(sdir, "10.10.0", no_device)
    assert not peer.exists(peer.namespace_name(sdir))

    def wrong_name(ifname: str) -> None:  # made, but the move fails: neither it nor the namespace stays
        make_tap(ifname)
        subprocess.run(["ip", "link", "set", "dev", ifname, "name", "isotb-wrong"], check=True)
        subprocess.run(["ip", "link", "set", "dev", "isotb-wrong", "name", ifname], check=True)
        raise peer.PeerError("later step failed")

    with pytest.raises(peer.PeerError, match="later step"):
        peer.create(sdir, "10.10.0", wrong_name)
    assert not peer.exists(peer.namespace_name(sdir))
    assert not link_in_host(peer.interface_name(sdir))


@needs_netns
def test_remove_stops_what_still_runs_in_the_namespace(sdir):
    info = peer.create(sdir, "10.10.0", make_tap)
    proc = subprocess.Popen(peer.exec_argv(info.namespace, ["sleep", "60"]), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while str(proc.pid) not in subprocess.run(["ip", "netns", "pids", info.namespace], capture_output=True,
                                                  text=True).stdout.split():
            assert time.monotonic() < deadline, "the command never ran in the namespace"
            time.sleep(0.05)
        assert peer.remove(info.namespace)
        assert proc.wait(timeout=10) != 0
        assert not peer.exists(info.namespace)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_netns
def test_down_finds_and_removes_the_namespace_a_killed_up_left(sdir):
    peer.create(sdir, "10.10.0", make_tap)  # `testbed up` killed after the peer, before topology.json
    left = down.find_leftovers(sdir, ask_supervisor=False)
    assert left and left.peer_namespace == peer.namespace_name(sdir)
    assert f"the peer namespace {peer.namespace_name(sdir)}" in left.describe()
    with pytest.raises(FileNotFoundError, match="still run: the peer namespace"):
        status.status(sdir)
    assert down.down(sdir, quiet()) is True
    assert not peer.exists(peer.namespace_name(sdir))
    assert not down.find_leftovers(sdir, ask_supervisor=False)
    assert down.down(sdir, quiet()) is False


@needs_netns
def test_add_peer_makes_it_or_says_why_not(sdir, monkeypatch):
    out = Console(file=open(sdir / "console.txt", "w"), width=300)
    assert up.add_peer(UpOptions(state_dir=sdir, peer="off"), sdir / "vhea", out) is None
    assert not peer.exists(peer.namespace_name(sdir))

    info = up.add_peer(UpOptions(state_dir=sdir, peer="on"), sdir / "vhea", out, provide_device=make_tap)
    assert info is not None and info.address == "10.10.0.254" and peer.exists(info.namespace)
    peer.remove(info.namespace)

    monkeypatch.setattr(devicemodel, "tap_ports_supported", lambda: False)
    assert up.add_peer(UpOptions(state_dir=sdir), sdir / "vhea", out) is None  # auto: a warning, no peer
    out.file.flush()
    assert "no native peer (this vhea has no TAP ports" in (sdir / "console.txt").read_text()
    with pytest.raises(RuntimeError, match="no native peer: this vhea has no TAP ports"):
        up.add_peer(UpOptions(state_dir=sdir, peer="on"), sdir / "vhea", out)
    assert not peer.exists(peer.namespace_name(sdir))


def test_add_peer_auto_without_root_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "unavailable_reason", lambda: "network namespaces need root")
    out = Console(file=open(tmp_path / "console.txt", "w"), width=300)
    assert up.add_peer(UpOptions(state_dir=tmp_path), tmp_path / "vhea", out) is None
    with pytest.raises(RuntimeError, match="need root"):
        up.add_peer(UpOptions(state_dir=tmp_path, peer="on"), tmp_path / "vhea", out)
    with pytest.raises(ValueError, match="peer must be one of auto, on, off"):
        UpOptions(state_dir=tmp_path, peer="yes").validate()
    assert UpOptions(state_dir=tmp_path).fingerprint()["peer"] == "auto"


def cli(sdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args, "--state-dir", str(sdir)] if args[0] != "peer"
                          else [sys.executable, "-m", "testbed.cli", "peer", "--state-dir", str(sdir), *args[1:]],
                          capture_output=True, text=True, timeout=60)


@needs_netns
def test_testbed_peer_runs_a_command_in_the_namespace(sdir):
    topo = state.Topology.load(FIXTURE_TOPOLOGY)
    topo.state_dir = str(sdir)
    res = cli(sdir, "peer", "--", "true")
    assert res.returncode == 1 and "no testbed is up" in res.stdout
    topo.save(state.topology_path(sdir))
    res = cli(sdir, "peer", "--", "true")
    assert res.returncode == 1 and "has no native peer" in res.stdout
    topo.peer = peer.create(sdir, "10.10.0", make_tap)
    topo.save(state.topology_path(sdir))
    res = cli(sdir, "peer", "--", "ip", "-o", "-4", "address", "show")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "10.10.0.254/24" in res.stdout and peer.interface_name(sdir) in res.stdout
    res = cli(sdir, "peer", "--", "sh", "-c", "exit 7")
    assert res.returncode == 7
    peer.remove(topo.peer.namespace)
    res = cli(sdir, "peer", "--", "true")
    assert res.returncode == 1 and "is gone" in res.stdout


def test_status_line_names_the_peer(tmp_path):
    from testbed.cli import peer_line

    topo = state.Topology.load(FIXTURE_TOPOLOGY)
    assert peer_line(topo, {}).startswith("none")
    topo.peer = state.PeerInfo("isotb-00000000", "vh-pr-00000000", "10.10.0.254", 24, "peer")
    line = peer_line(topo, {"peer": {"connected": True}})
    assert "10.10.0.254/24 on vh-pr-00000000 in namespace isotb-00000000" in line
    assert "MISSING" in line and "(connected)" in line
    assert "(?)" in peer_line(topo, None)


@needs_netns
@pytest.mark.skipif(not devicemodel.tap_ports_supported(),
                    reason="this vhea has no TAP ports yet (`vhea port add --tap`: the tap-port branch)")
def test_real_vhea_tap_port_in_the_peer_namespace(sdir):
    """vhea makes the TAP device, the testbed moves it into the namespace: vhea's stats show the port as a tap,
    and `testbed down` (leftovers: no topology here) stops vhea and removes the namespace, leaving nothing."""
    sock_dir = sdir / "vhea"
    dm = devicemodel.start(sock_dir, ["a"], 1, sdir / "vhea.log", pid_file=sdir / down.VHEA_PID_FILE)
    try:
        info = up.add_peer(UpOptions(state_dir=sdir, peer="on"), sock_dir, quiet())
        assert info is not None
        assert "10.10.0.254/24" in in_ns(info.namespace, "ip", "-o", "-4", "address", "show", "dev", info.interface)
        stats = devicemodel.stats(sock_dir)
        assert stats["ports"]["peer"]["kind"] == "tap"
        assert down.down(sdir, quiet()) is True
        assert not devicemodel.pid_alive(dm)
        assert not peer.exists(info.namespace) and not link_in_host(info.interface)
    finally:
        devicemodel.stop(dm)


@needs_netns
def test_restart_device_model_puts_a_new_device_into_the_same_namespace(sdir):
    """vhea's TAP device goes with the old process; the namespace and what runs there stay, a new device goes in
    (a persistent TAP device stands in for vhea's here, so the old one is still there and is replaced)."""
    from testbed.lifecycle.restart import restart_device_model

    sock_dir, log = sdir / "vhea", sdir / "vhea.log"
    old = devicemodel.start(sock_dir, ["a"], 1, log)
    new = 0
    info = peer.create(sdir, "10.10.0", make_tap)
    sleeper = subprocess.Popen(peer.exec_argv(info.namespace, ["sleep", "60"]), stdin=subprocess.DEVNULL)
    try:
        topo = state.Topology.load(FIXTURE_TOPOLOGY)
        topo.state_dir, topo.guests, topo.peer = str(sdir), [], info
        topo.device_model = state.DeviceModelInfo(str(sock_dir), old, ["a"], str(log))
        topo.save(state.topology_path(sdir))
        made: list[str] = []

        def new_tap(ifname: str) -> None:
            assert not link_in_host(ifname) and ifname not in in_ns(info.namespace, "ip", "-o", "link")
            made.append(ifname)
            make_tap(ifname)

        new = restart_device_model(sdir, quiet(), provide_peer_device=new_tap)
        assert made == [info.interface]
        assert "10.10.0.254/24" in in_ns(info.namespace, "ip", "-o", "-4", "address", "show", "dev", info.interface)
        assert sleeper.poll() is None  # what ran in the namespace still runs
        back = state.Topology.load(state.topology_path(sdir))
        assert back.peer is not None and back.peer.namespace == info.namespace and back.device_model.pid == new
    finally:
        sleeper.kill()
        sleeper.wait()
        for pid in (old, new):
            if pid:
                devicemodel.stop(pid)
        peer.remove(info.namespace)

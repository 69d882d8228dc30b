"""The native peer as a side of a case (`server: peer`, `client: peer`): validated in the playbook, paired by the
runner, run natively (its own layout, no upload, no placement) through its own shell. Local shells stand in for
the guest and the peer (loopback data path), as in the other harness tests; one test runs PeerShell in a real
network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness_helpers import free_port, local_runner, stream_playbook
from rich.console import Console

from testbed import devicemodel, state
from testbed import peer as testbed_peer
from testbed.harness import peer_role, remote
from testbed.harness.errors import HarnessError
from testbed.harness.playbook import PEER, PlaybookError, parse_playbook


class RecordingLocalShell(remote.LocalShell):
    """This host standing in for the peer; remembers every command."""

    def __init__(self, name: str):
        super().__init__(name)
        self.commands: list[str] = []

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        self.commands.append(command)
        return super().run(command, timeout_s)

    def put(self, local: Path, remote_path: str) -> None:
        raise AssertionError("nothing is uploaded to the peer")


def peer_info(address: str = "10.10.0.254") -> state.PeerInfo:
    return state.PeerInfo("isotb-0000abcd", "vh-pr-0000abcd", address, 24, "peer", "02:00:00:00:00:fe")


def peer_runner(tmp_path: Path, address: str = "127.0.0.1"):
    """The loopback runner of the harness tests with a peer in its topology and a recording shell for it."""
    runner = local_runner(tmp_path, None)
    runner.topology.peer = peer_info(address)
    runner.topology.state_dir = str(tmp_path)
    shell = RecordingLocalShell(PEER)
    runner.shells[PEER] = shell
    runner.cases.layouts[PEER] = peer_role.layout(runner.topology, runner.guest_root)
    return runner, shell


def peer_playbook(port: int, role: str) -> str:
    return stream_playbook(port, f"    {role}: peer\n").replace("[256, 1448]", "512")


def test_playbook_accepts_the_peer_as_server_or_client():
    pb = parse_playbook(peer_playbook(5701, "server"), "p.yaml")
    assert pb.tests[0].server == "peer" and pb.tests[0].client is None
    pb = parse_playbook(peer_playbook(5701, "client") + "    server: iso-b\n", "p.yaml")
    assert pb.tests[0].client == "peer"


@pytest.mark.parametrize(("extra", "line", "message"), [
    ("    client: peer\n    stack: iso\n", 12, "the peer runs isoperf natively on kernel sockets: stack iso"),
    ("    server: peer\n    client: peer\n", 12, "client and server are the same guest 'peer'"),
    ("    server: peer\n    crosscheck: true\n", 13, "'crosscheck' runs iperf3/sockperf on two guests, not on"),
])
def test_playbook_rejects_what_the_peer_cannot_do_with_file_and_line(extra, line, message):
    with pytest.raises(PlaybookError, match=rf"p\.yaml:{line}: tests\[0\]: {message}"):
        parse_playbook(stream_playbook(5701, extra).replace("[256, 1448]", "512"), "p.yaml")


def test_pair_puts_the_first_guest_opposite_the_peer(tmp_path):
    runner, _shell = peer_runner(tmp_path, "10.10.0.254")
    client, server = runner.pair(parse_playbook(peer_playbook(5701, "server")).cases()[0])
    assert client.name == "iso-a"
    assert (server.name, server.data_ip, server.port, server.ssh_port) == ("peer", "10.10.0.254", "peer", 0)
    client, server = runner.pair(parse_playbook(peer_playbook(5701, "client")).cases()[0])
    assert (client.name, server.name) == ("peer", "iso-a")
    runner.topology.guests = runner.topology.guests[:1]  # one guest and the peer: enough
    assert [g.name for g in runner.pair(parse_playbook(peer_playbook(5701, "server")).cases()[0])] == ["iso-a", "peer"]


def test_a_testbed_without_a_peer_says_how_to_get_one(tmp_path):
    runner = local_runner(tmp_path, None)
    assert runner.topology.peer is None and PEER not in runner.shells
    with pytest.raises(HarnessError, match=r"test 'stream-local': the testbed has no native peer \(bring it up with "
                                           r"`testbed up --peer`\)"):
        runner.pair(parse_playbook(peer_playbook(5701, "server")).cases()[0])


def test_runner_gives_the_peer_a_shell_in_its_namespace(tmp_path):
    from testbed.harness.guestcmd import GuestLayout
    from testbed.harness.runner import Runner

    topo = state.Topology.load(Path(__file__).parent / "fixtures" / "harness" / "topology.json")
    topo.peer = peer_info()
    shells: dict = {}
    runner = Runner(topo, shells, GuestLayout(), None, Console(file=open(tmp_path / "c.txt", "w")))
    assert isinstance(shells[PEER], remote.PeerShell) and shells[PEER].namespace == "isotb-0000abcd"
    layout = runner.cases.layouts[PEER]
    assert layout.python == sys.executable and layout.log_dir == f"{topo.state_dir}/peer"
    assert layout.isoperf().endswith(f"PYTHONPATH={runner.guest_root} {sys.executable} -m isoperf")


def test_a_case_with_the_peer_as_server_runs_it_natively_and_says_what_it_skipped(tmp_path):
    runner, shell = peer_runner(tmp_path)
    info = runner.prepare([PEER])
    assert info[PEER] == {"native": True, "namespace": "isotb-0000abcd", "address": "127.0.0.1",
                          "code": str(runner.guest_root), "python": sys.executable, "uploaded": False}
    assert (tmp_path / "peer").is_dir()  # the peer's logs

    record = runner.run_case(parse_playbook(peer_playbook(free_port(), "server"), "p.yaml").cases()[0])
    assert record["status"] == "ok", record["error"]
    assert (record["client"], record["server"], record["server_ip"]) == ("iso-a", "peer", "127.0.0.1")
    assert record["isoperf"]["verified"] is True and record["isoperf"]["bytes"] > 0
    # the peer's isoperf: the repository's code (here the runner's copy of it) with this venv's Python
    assert f"PYTHONPATH={runner.guest_root} {sys.executable} -m isoperf server" in record["commands"]["server"]
    assert str(tmp_path / "peer" / "isoperf-server-") in record["commands"]["server"]
    assert "-m isoperf client" in record["commands"]["client"]
    assert f"PYTHONPATH={tmp_path / 'opt'}" in record["commands"]["client"]  # the guest's layout
    assert any("listening" in line for line in record["server_log"])
    # no placement and no NIC layout on the peer, and the record says so; the guest gets both
    assert record["placement"]["peer"] == peer_role.placement_record()
    assert "native peer: no NIC placement" in record["placement"]["peer"]["note"]
    assert record["placement"]["iso-a"]["mode"] == "legacy" and "layout" in record["placement"]["iso-a"]
    assert "placement_server" not in record["commands"] and "placement_client" in record["commands"]
    assert not any("placement" in c for c in shell.commands)
    # TCP counters read through the peer's shell (in its namespace: its own)
    assert set(record["tcp"]) == {"client", "server"} and "error" not in record["tcp"]["server"]
    assert sum("/proc/net/snmp" in c for c in shell.commands) == 2


def test_a_case_with_the_peer_as_client(tmp_path):
    runner, shell = peer_runner(tmp_path)
    runner.prepare([PEER])
    record = runner.run_case(parse_playbook(peer_playbook(free_port(), "client"), "p.yaml").cases()[0])
    assert record["status"] == "ok", record["error"]
    assert (record["client"], record["server"]) == ("peer", "iso-a")
    assert f"{sys.executable} -m isoperf client" in record["commands"]["client"]
    assert any("-m isoperf client" in c for c in shell.commands)
    assert record["placement"]["peer"]["mode"] == "native" and "layout" not in record["placement"]["peer"]


@pytest.mark.skipif(bool(testbed_peer.unavailable_reason()), reason="network namespaces need root and `ip`")
def test_peer_shell_runs_in_the_namespace(tmp_path):
    sdir = tmp_path / "tb"
    sdir.mkdir()
    info = testbed_peer.create(sdir, "10.10.0", lambda ifname: subprocess.run(
        ["ip", "tuntap", "add", "dev", ifname, "mode", "tap"], check=True, capture_output=True))
    try:
        shell = remote.PeerShell(PEER, info.namespace)
        r = shell.run("ip -o -4 address show; echo \"$0 'quoted' ok\"")
        assert r.exit_code == 0, r.stderr
        assert "10.10.0.254/24" in r.stdout and "'quoted' ok" in r.stdout
        assert shell.run("exit 5").exit_code == 5
        assert shell.run("cat /proc/net/snmp").stdout.startswith("Ip:")
    finally:
        testbed_peer.remove(info.namespace)


@pytest.mark.skipif(bool(testbed_peer.unavailable_reason()), reason="network namespaces need root and `ip`")
def test_a_case_against_a_real_peer_namespace_over_a_veth(tmp_path):
    """End to end without vhea: the peer namespace made by testbed.peer on one end of a veth pair (the other end
    on the host stands in for the guest's side of the switch), the server started by PeerShell in it, the client
    on the host. A subnet of its own, so nothing on the host's routes meets the guests' 10.10.0.0/24."""
    sdir = tmp_path / "tb"
    sdir.mkdir()
    subnet = f"10.254.{free_port() % 250}"
    host_end = "vh-pt-" + testbed_peer.interface_name(sdir)[-8:]

    def veth(ifname: str) -> None:
        subprocess.run(["ip", "link", "add", ifname, "type", "veth", "peer", "name", host_end], check=True,
                       capture_output=True)

    info = testbed_peer.create(sdir, subnet, veth)
    try:
        subprocess.run(["ip", "address", "add", f"{subnet}.1/24", "dev", host_end], check=True)
        subprocess.run(["ip", "link", "set", "dev", host_end, "up"], check=True)
        runner = local_runner(tmp_path, None)
        runner.topology.peer = info
        runner.topology.state_dir = str(sdir)
        runner.shells[PEER] = peer_role.shell(info)  # a real PeerShell, as the runner makes it
        runner.cases.layouts[PEER] = peer_role.layout(runner.topology, runner.guest_root)
        runner.prepare([PEER])
        record = runner.run_case(parse_playbook(peer_playbook(free_port(), "server"), "p.yaml").cases()[0])
        assert record["status"] == "ok", (record["error"], record["server_log"])
        assert record["server_ip"] == f"{subnet}.254" and record["isoperf"]["bytes"] > 0
        assert record["tcp"]["server"]["out_segs"] > 0  # the namespace's own counters moved
    finally:
        testbed_peer.remove(info.namespace)
        subprocess.run(["ip", "link", "del", "dev", host_end], capture_output=True)
    assert not testbed_peer.exists(info.namespace)
    assert subprocess.run(["ip", "link", "show", "dev", host_end], capture_output=True).returncode != 0


@pytest.mark.skipif(bool(testbed_peer.unavailable_reason()), reason="network namespaces need root and `ip`")
@pytest.mark.skipif(not devicemodel.tap_ports_supported(),
                    reason="this vhea has no TAP ports yet (`vhea port add --tap`: the tap-port branch)")
def test_a_case_guest_to_peer_through_a_real_vhea(tmp_path):
    """The whole data path without VMs: vhea serving the peer's TAP port (made by `testbed up`'s add_peer) and a
    second TAP port in a namespace of its own standing in for guest iso-a (10.10.0.1); the case's client runs
    there, the server natively in the peer, the bytes cross vhea's switch (its counters say so)."""
    import tempfile

    from testbed.harness import dmstats
    from testbed.lifecycle.options import UpOptions
    from testbed.lifecycle.up import add_peer

    sdir = Path(tempfile.mkdtemp(prefix="tbh", dir="/tmp"))  # short: vhea's socket paths
    sock_dir = sdir / "vhea"
    dm = devicemodel.start(sock_dir, ["a"], 1, sdir / "vhea.log")
    guest_ns = state.PeerInfo("isotb-g" + testbed_peer.namespace_name(sdir)[6:], "vh-g-" +
                              testbed_peer.interface_name(sdir)[6:], "10.10.0.1", 24, "g")
    info = None
    try:
        info = add_peer(UpOptions(state_dir=sdir, peer="on"), sock_dir, Console(file=open(os.devnull, "w")))
        testbed_peer.attach(guest_ns, lambda ifname: devicemodel.add_tap_port(sock_dir, "g", ifname))
        runner = local_runner(tmp_path, lambda: dmstats.read_stats(str(sock_dir)))
        runner.topology.peer, runner.topology.state_dir = info, str(sdir)
        guest = runner.topology.guests[0]
        guest.data_ip, guest.port = "10.10.0.1", "g"
        runner.shells["iso-a"] = remote.PeerShell("iso-a", guest_ns.namespace)
        runner.shells[PEER] = peer_role.shell(info)
        runner.cases.layouts[PEER] = peer_role.layout(runner.topology, runner.guest_root)
        runner.prepare([PEER])
        record = runner.run_case(parse_playbook(peer_playbook(free_port(), "server"), "p.yaml").cases()[0])
        assert record["status"] == "ok", (record["error"], record["server_log"])
        assert record["server_ip"] == "10.10.0.254" and record["isoperf"]["verified"] is True
        assert record["device_model"]["error"] is None and record["device_model"]["crossed"] is True
        assert record["device_model"]["server_port"] == "peer"
    finally:
        devicemodel.stop(dm)
        for ns in (guest_ns.namespace, info.namespace if info else testbed_peer.namespace_name(sdir)):
            testbed_peer.remove(ns)
        shutil.rmtree(sdir, ignore_errors=True)

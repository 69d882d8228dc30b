"""The harness on a merged topology (guests on two hosts): each guest's own SSH endpoint, credentials and libvirt
URI, the control path between hosts, and what cannot be measured here recorded as null with why. No VMs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness_helpers import ISO_PB, ISO_RESULT, ScriptedShell
from proc_helpers import FakeClock, FakeHost
from rich.console import Console

from testbed import state
from testbed.harness import benchmark, control_path, hostcpu_sample, peer_role, remote
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.playbook import parse_playbook
from testbed.harness.runner import Runner

FIXTURE = Path(__file__).parent / "fixtures" / "harness" / "topology.json"
REMOTE_URI = "qemu+ssh://hostb/embed?root=/var/tmp/b/libvirt"


def merged_topology(uri: str = "qemu:///embed?root=/x") -> state.Topology:
    """The fixture's iso-a and iso-b on this host, iso-c on hostb with its own user and key (as a merge makes)."""
    topo = state.Topology.load(FIXTURE)
    topo.uri = uri
    c = dataclasses.replace(topo.guests[1], name="iso-c", ssh_host="hostb", ssh_port=22203, data_ip="10.10.0.3",
                            data_mac="52:54:00:10:00:03", port="c", uri=REMOTE_URI, ssh_user="admin",
                            ssh_key="/keys/hostb", control_port=40003)
    topo.guests.append(c)
    topo.merged_from = [{"file": "/a.json", "host": None}, {"file": "/b.json", "host": "hostb"}]
    return topo


def test_each_guest_gets_a_shell_with_its_own_endpoint_and_credentials(tmp_path, monkeypatch):
    made = []

    class FakeFabricShell(remote.LocalShell):
        def __init__(self, name, host, port, user, key):
            super().__init__(name)
            made.append((name, host, port, user, key))

    monkeypatch.setattr(remote, "FabricShell", FakeFabricShell)
    merged_topology().save(tmp_path / "topology.json")
    playbook = parse_playbook(ISO_PB.replace("test: stream", "test: stream\n    client: iso-c\n    server: iso-a"))
    seen = {}

    def go(runner, used, datapath):
        seen.update(used=used, hosts=runner.hosts(), shells=sorted(runner.shells))
        return tmp_path / "run.json", 0

    benchmark._on_testbed(playbook, tmp_path, Console(file=open(tmp_path / "c.txt", "w")), go)
    assert sorted(made) == [("iso-a", "127.0.0.1", 22201, "root", "/root/.cache/isostack-testbed/images/0123abcd/"
                                                                   "id_ed25519"),
                            ("iso-b", "127.0.0.1", 22202, "root", "/root/.cache/isostack-testbed/images/0123abcd/"
                                                                   "id_ed25519"),
                            ("iso-c", "hostb", 22203, "admin", "/keys/hostb")]
    assert seen == {"used": ["iso-a", "iso-c"], "hosts": {"iso-c": "hostb"}, "shells": ["iso-a", "iso-b", "iso-c"]}


def test_run_metadata_says_where_each_guest_runs():
    topo = merged_topology()
    assert benchmark.where(topo, "iso-c") == {"host": "hostb", "uri": REMOTE_URI, "ssh": "admin@hostb:22203"}
    assert benchmark.where(topo, "iso-a") == {"host": None, "uri": "qemu:///embed?root=/x",
                                              "ssh": "root@127.0.0.1:22201"}
    assert benchmark.where(topo, "peer") == {"host": None, "uri": None, "ssh": None}


def test_host_cpu_is_sampled_per_guest_uri_and_domain_a_remote_one_null_with_why(tmp_path):
    host = FakeHost(tmp_path)
    topo = merged_topology(host.uri)
    topo.guests[0].name, topo.guests[0].domain = "iso-a-x", "iso-a"  # renamed by a merge: its domain is iso-a
    sampler = hostcpu_sample.HostCpuSampler.for_topology(topo, proc_root=host.proc, ticks_per_s=100,
                                                         clock=FakeClock(0.0, 2.0))
    interval = sampler.start({"client": "iso-a-x", "server": "iso-c"})
    host.burn(1000, 1003, 100)
    interval.stop()
    rec = interval.record({"messages_per_s": 1000.0, "cpu": {"client": {}}}, 2)
    a, c = rec["guests"]["iso-a-x"], rec["guests"]["iso-c"]
    assert a["qemu_pid"] == 1000 and a["vcpu_seconds"] == 1.0 and a["error"] is None
    assert (c["qemu_pid"], c["vcpus"], c["vcpu_seconds"]) == (None, None, None)
    assert c["error"] == (f"the guest runs on another host (libvirt URI {REMOTE_URI}): its QEMU threads are not "
                          "visible here")
    assert rec["client_messages_per_host_cpu_s"] == 2000.0 and rec["server_messages_per_host_cpu_s"] is None


def test_a_case_across_hosts_takes_the_data_path_and_records_what_this_host_cannot_see(tmp_path):
    host = FakeHost(tmp_path)
    topo = merged_topology(host.uri)
    shells = {"iso-a": ScriptedShell("iso-a", ISO_RESULT), "iso-c": ScriptedShell("iso-c", ISO_RESULT)}
    runner = Runner(topo, shells, GuestLayout(), lambda: {}, Console(file=open(tmp_path / "c.txt", "w")))
    runner.cases.hostcpu = hostcpu_sample.HostCpuSampler.for_topology(topo, proc_root=host.proc, ticks_per_s=100,
                                                                     clock=FakeClock(0.0, 1.0))
    pb = parse_playbook(ISO_PB.replace("test: stream", "test: stream\n    client: iso-a\n    server: iso-c"))
    record = runner.run_case(pb.cases()[0])
    assert record["status"] == "ok", record["error"]
    assert record["control"] == {"host": "10.10.0.3", "port": 5701, "path": "data", "why":
                                 "iso-a runs on this host and iso-c on hostb: the management path does not join hosts"}
    assert "10.10.0.3" in record["commands"]["client"]
    assert record["device_model"]["error"] == "iso-c runs on hostb: its vhea port is not this host's"
    assert record["device_model"]["crossed"] is None
    assert record["host_cpu"]["guests"]["iso-a"]["error"] is None
    assert "another host" in record["host_cpu"]["guests"]["iso-c"]["error"]
    assert record["host_cpu"]["guests"]["iso-c"]["role"] == "server"
    # what runs in the guests (placement, isostackd) went to each guest's own shell
    assert any("-m isoperf server" in c for c in shells["iso-c"].commands)
    assert any("-m isoperf client" in c for c in shells["iso-a"].commands)


PEER = state.PeerInfo(namespace="isotb-1", interface="vh-pr-1", address="10.10.0.254", prefix_len=24, port="peer",
                      mac="02:00:00:00:00:01", mgmt_interface="vh-pm-1", mgmt_host_address="10.254.1.1",
                      mgmt_address="10.254.1.2")


def test_the_control_path_joins_guests_of_one_host_only():
    topo = merged_topology()
    a, b, c = (dataclasses.replace(g, control_port=40001 + i) for i, g in enumerate(topo.guests))
    d = dataclasses.replace(c, name="iso-d", data_ip="10.10.0.4", control_port=40004)
    p = peer_role.node(PEER)
    hosts = {"iso-c": "hostb", "iso-d": "hostb"}
    same_remote = control_path.choose(c, d, PEER, 5701, hosts)  # both on hostb: its gateway forwards
    assert (same_remote.host, same_remote.port, same_remote.path) == ("10.0.2.2", 40004, "management")
    assert control_path.choose(a, b, PEER, 5701, hosts).path == "management"
    for client, server, why in [(c, a, "iso-c runs on hostb and iso-a on this host"),
                                (c, p, "iso-c runs on hostb and peer on this host"),
                                (p, c, "peer runs on this host and iso-c on hostb")]:
        path = control_path.choose(client, server, PEER, 5701, hosts)
        assert (path.host, path.path) == (server.data_ip, "data") and path.why.startswith(why)
        assert control_path.server_binds(server, path) == (server.data_ip, server.data_ip)


def test_the_report_names_the_host_of_a_guest_on_another_one():
    from testbed.harness import report

    run = {"metadata": {"guests": {"iso-a": {"kernel": "6.1", "python": "Python 3.11", "host": None},
                                   "iso-c": {"kernel": "6.1", "python": "Python 3.11", "host": "hostb",
                                             "uri": REMOTE_URI}}}}
    lines = [line for line in report.metadata_lines(run) if line.startswith("guest iso-")]
    assert lines == ["guest iso-a: kernel 6.1, Python 3.11, package ?",
                     f"guest iso-c: kernel 6.1, Python 3.11, package ?, on hostb ({REMOTE_URI})"]

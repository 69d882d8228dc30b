"""Topologies across hosts: per-guest URI and SSH credentials, the checks on load, `testbed topology merge`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import cli, merge
from testbed.lifecycle import status as lifecycle_status
from testbed.lifecycle.options import UpOptions, guest_names
from testbed.merge import MergeError, MergeInput
from testbed.state import DeviceModelInfo, GuestInfo, PeerInfo, Topology, TopologyError, uri_host

FIXTURE = Path(__file__).parent / "fixtures" / "harness" / "topology.json"


def host_topology(sdir: str, first: int = 1, n: int = 2, uri: str | None = None, key: str = "/k",
                  peer: bool = True, **options) -> Topology:
    """What `testbed up --first-guest FIRST --guests N` writes on a host (numbered as up numbers them)."""
    guests = [GuestInfo(name=name, ssh_host="127.0.0.1", ssh_port=22000 + i, data_ip=f"10.10.0.{i + 1}",
                        data_mac=f"52:54:00:10:00:{i + 1:02x}", port=port, vcpus=2, memory_mib=1024,
                        mgmt_mac=f"52:54:00:ff:00:{i + 1:02x}", console_log=f"{sdir}/guests/{name}/console.log",
                        control_port=40000 + i)
              for i, (name, port) in enumerate(guest_names(n, first), start=first - 1)]
    pinfo = PeerInfo(namespace=f"isotb-{first}", interface="vh-pr-1", address="10.10.0.254", prefix_len=24,
                     port="peer") if peer else None
    return Topology(state_dir=sdir, uri=uri or f"qemu:///embed?root={sdir}/libvirt", accel="tcg", ssh_user="root",
                    ssh_key=key, image={"recipe_hash": "abc"},
                    device_model=DeviceModelInfo(f"{sdir}/vhea", 4242, [p for _, p in guest_names(n, first)], "/l"),
                    guests=guests, supervisor_pid=77, options={"queues": 1, **options}, peer=pinfo)


def write(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw))
    return path


# --- the per-guest fields and the checks on load -------------------------------------------------------------


def test_a_guest_may_name_its_own_uri_and_ssh_credentials_else_the_topologys(tmp_path):
    topo = host_topology("/st")
    a, b = topo.guests
    b.uri, b.ssh_user, b.ssh_key, b.domain = "qemu+ssh://hostb/system", "admin", "/keys/hostb", "iso-a"
    topo.save(tmp_path / "topology.json")
    back = Topology.load(tmp_path / "topology.json")
    assert back == topo
    a, b = back.guests
    assert (back.guest_uri(a), back.guest_host(a), back.domain_name(a)) == ("qemu:///embed?root=/st/libvirt", None,
                                                                              "iso-a")
    assert (back.guest_uri(b), back.guest_host(b), back.domain_name(b)) == ("qemu+ssh://hostb/system", "hostb",
                                                                              "iso-a")
    assert tuple(dataclasses.astuple(back.ssh_endpoint(a))) == ("127.0.0.1", 22000, "root", "/k")
    assert tuple(dataclasses.astuple(back.ssh_endpoint(b))) == ("127.0.0.1", 22001, "admin", "/keys/hostb")


def test_a_file_from_before_the_per_guest_fields_loads_with_the_topologys():
    topo = Topology.load(FIXTURE)
    g = topo.guests[0]
    assert (g.uri, g.ssh_user, g.ssh_key, g.domain, topo.merged_from) == (None, None, None, None, None)
    assert topo.ssh_endpoint(g).key == topo.ssh_key and topo.guest_host(g) is None


@pytest.mark.parametrize("uri, host", [
    ("qemu:///embed?root=/x", None), ("qemu:///system", None), ("qemu+ssh://root@hostb/system", "hostb"),
    ("qemu+tcp://10.0.0.2/system", "10.0.0.2"), ("qemu+ssh:///system", "qemu+ssh"),
])
def test_uri_host_names_the_other_host_of_a_libvirt_uri(uri, host):
    assert uri_host(uri) == host


def _bad(raw: dict, path: str, value) -> dict:
    """`raw` with the field at `path` ("guests.1.ssh_port") set to `value` (or removed for ...)."""
    raw = json.loads(json.dumps(raw))
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


@pytest.mark.parametrize("path, value, message", [
    ("guests.1.ssh_port", "22", "guests[1] (iso-b): ssh_port: expected an integer, got \"22\""),
    ("guests.1.ssh_port", True, "guests[1] (iso-b): ssh_port: expected an integer, got true"),
    ("guests.1.ssh_port", 70000, "guest iso-b: ssh_port 70000 is out of range"),
    ("guests.1.data_ip", ..., "guests[1] (iso-b): missing field 'data_ip'"),
    ("guests.1.data_ip", "10.10.0", "guest iso-b: data_ip '10.10.0' is not an IPv4 address"),
    ("guests.1.data_ip", "10.10.0.1", "guest iso-b: data_ip 10.10.0.1 is also iso-a's"),
    ("guests.1.name", "iso-a", "guest iso-a: the name is used by two guests"),
    ("guests.1.name", "../../etc", "guests[1]: name '../../etc' is not a guest name"),
    ("guests.1.ssh_pasword", "x", "guests[1] (iso-b): unknown field 'ssh_pasword'"),
    ("guests.1.uri", "not a uri", "guest iso-b: uri: 'not a uri' is not a libvirt URI"),
    ("guests.1.uri", "qemu+ssh://[::1/system", "guest iso-b: uri: 'qemu+ssh://[::1/system' is not a libvirt URI"),
    ("guests.1.uri", 5, "guests[1] (iso-b): uri: expected a string, got 5"),
    ("guests.1.ssh_user", "", "guest iso-b: ssh_user is empty (leave it out to use the topology's)"),
    ("guests.1.ssh_user", "root; rm", "guest iso-b: ssh_user 'root; rm' is not a user name"),
    ("guests.1.ssh_key", ["/k"], "guests[1] (iso-b): ssh_key: expected a string, got [\"/k\"]"),
    ("guests.1.ssh_host", "-oProxyCommand=sh", "guest iso-b: ssh_host '-oProxyCommand=sh' is not a host name"),
    ("guests.1.domain", "a/b", "guest iso-b: domain 'a/b' is not a libvirt domain name"),
    ("guests", {"iso-a": {}}, "guests: expected a list, got"),
    ("device_model.pid", "4242", "device_model: pid: expected an integer"),
    ("peer", [], "peer: expected an object, got []"),
    ("uri", "", "uri: '' is not a libvirt URI"),
])
def test_a_bad_field_is_an_error_naming_the_file_the_guest_and_the_field(tmp_path, path, value, message):
    raw = json.loads(json.dumps(dataclasses.asdict(host_topology("/st"))))
    f = write(tmp_path / "topology.json", _bad(raw, path, value))
    with pytest.raises(TopologyError) as e:
        Topology.load(f)
    assert str(e.value).startswith(f"{f}: ") and message in str(e.value), str(e.value)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "a topology is a JSON object, not list"),
    ("{\"version\": 1", "not JSON"),
    ("{\"version\": 1, \"uri\": \"qemu:///system\"}", "missing field 'state_dir'"),
])
def test_a_file_that_is_not_a_topology_is_a_clear_error(tmp_path, text, message):
    f = tmp_path / "topology.json"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        Topology.load(f)


# --- merging --------------------------------------------------------------------------------------------------


def two_hosts(tmp_path: Path, b_first: int = 3) -> tuple[Topology, Topology]:
    return host_topology("/var/tmp/a"), host_topology("/var/tmp/b", first=b_first, key="/on/hostb/id")


def test_merge_keeps_this_hosts_guests_and_places_the_others_on_their_host(tmp_path):
    a, b = two_hosts(tmp_path)
    key = tmp_path / "hostb.key"
    key.write_text("k")
    merged, notes = merge.merge([(MergeInput(Path("b.json"), "hostb"), b), (MergeInput(Path("a.json")), a)],
                                {"hostb": str(key)})
    assert [g.name for g in merged.guests] == ["iso-a", "iso-b", "iso-c", "iso-d"]  # this host's first
    assert merged.state_dir == "/var/tmp/a" and merged.device_model == a.device_model and merged.peer == a.peer
    for g in merged.guests[:2]:  # this host's: the topology's values, nothing per guest
        assert (g.uri, g.ssh_user, g.ssh_key, g.ssh_host) == (None, None, None, "127.0.0.1")
        assert merged.guest_host(g) is None
    c = merged.guest("iso-c")
    assert c.uri == "qemu+ssh://hostb/embed?root=/var/tmp/b/libvirt" and merged.guest_host(c) == "hostb"
    assert merged.ssh_endpoint(c) == type(merged.ssh_endpoint(c))("hostb", 22002, "root", str(key))
    assert c.ssh_user is None and c.data_ip == "10.10.0.3" and c.port == "c" and c.domain is None
    assert [m["host"] for m in merged.merged_from] == ["hostb", None]
    assert merged.merged_from[0]["guests"] == ["iso-c", "iso-d"]
    assert notes == ["b.json's native peer (10.10.0.254) is left out: the harness runs the peer of this host only"
                     " (bring other hosts up with --no-peer)"]
    merged.save(tmp_path / "topology.json")
    assert Topology.load(tmp_path / "topology.json") == merged


def test_merge_keeps_a_uri_that_names_its_host_and_a_non_loopback_ssh_host(tmp_path):
    a, b = two_hosts(tmp_path)
    b = dataclasses.replace(b, uri="qemu+ssh://admin@lab2/system")
    for g in b.guests:
        g.ssh_host = "192.168.7.2"  # `testbed up --ssh-bind 192.168.7.2` on hostb
    merged, notes = merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "lab2"), b)])
    c = merged.guest("iso-c")
    assert (c.uri, c.ssh_host, c.ssh_key) == ("qemu+ssh://admin@lab2/system", "192.168.7.2", "/on/hostb/id")
    assert any("its SSH key /on/hostb/id is not on this host" in n and "--ssh-key lab2=PATH" in n for n in notes)


def test_a_clashing_guest_name_is_renamed_and_keeps_its_libvirt_domain(tmp_path):
    a, b = two_hosts(tmp_path)
    b.guests[0].name = "iso-a"  # a hand-made host topology with a name of this host's
    merged, notes = merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb.lab"), b)])
    renamed = merged.guest("iso-a-hostb-lab")
    assert renamed.domain == "iso-a" and merged.domain_name(renamed) == "iso-a" and renamed.data_ip == "10.10.0.3"
    assert "b.json guest iso-a is iso-a-hostb-lab in the merged topology (the name is a.json guest iso-a's)" in notes


def test_clashing_data_ips_are_refused_naming_both_guests_and_the_fix(tmp_path):
    a, b = two_hosts(tmp_path, b_first=1)  # both hosts brought up without --first-guest
    with pytest.raises(MergeError) as e:
        merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), b)])
    assert str(e.value) == ("b.json guest iso-a has data IP 10.10.0.1, as a.json guest iso-a has: bring one host's "
                            "testbed up with `testbed up --first-guest N` so the hosts' guests number apart")
    b = host_topology("/var/tmp/b", first=3)
    b.guests[0].data_mac = a.guests[1].data_mac.upper()
    with pytest.raises(MergeError, match="b.json guest iso-c has data MAC 52:54:00:10:00:02, as a.json guest iso-b"):
        merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), b)])


@pytest.mark.parametrize("change, message", [
    (lambda b: dataclasses.replace(b, accel="kvm"), "b.json runs its guests with kvm and a.json with tcg"),
    (lambda b: dataclasses.replace(b, options={"queues": 2}), "b.json has queues 2 and a.json 1"),
    (lambda b: dataclasses.replace(b, merged_from=[{}]), "b.json is a merged topology"),
    (lambda b: dataclasses.replace(b, peer=dataclasses.replace(b.peer, address="10.10.0.3")), None),
])
def test_merge_refuses_what_one_run_cannot_use(tmp_path, change, message):
    a, b = two_hosts(tmp_path)
    inputs = [(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), change(b))]
    if message is None:  # a peer of another host is dropped, so its address does not matter
        merge.merge(inputs)
        return
    with pytest.raises(MergeError, match=message):
        merge.merge(inputs)


def test_merge_refuses_two_files_of_one_host_one_file_and_a_key_for_no_host(tmp_path):
    a, b = two_hosts(tmp_path)
    with pytest.raises(MergeError, match="a.json and b.json are both on this host: one testbed per host"):
        merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json")), b)])
    with pytest.raises(MergeError, match="at least two"):
        merge.merge([(MergeInput(Path("a.json")), a)])
    with pytest.raises(MergeError, match="--ssh-key for hostc: no input is FILE@that host"):
        merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), b)], {"hostc": "/k"})


def test_the_peer_must_not_take_a_guests_data_ip(tmp_path):
    a, b = two_hosts(tmp_path)
    a.peer.address = "10.10.0.4"
    with pytest.raises(MergeError, match="the native peer's address 10.10.0.4 is also the data IP of b.json guest"
                                         " iso-d"):
        merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), b)])


@pytest.mark.parametrize("spec, path, host", [
    ("a.json", "a.json", None), ("/x/b.json@hostb", "/x/b.json", "hostb"), ("b.json@10.0.0.2", "b.json", "10.0.0.2"),
    ("/mnt/u@x/topology.json", "/mnt/u@x/topology.json", None),
])
def test_merge_input_is_a_file_and_the_host_after_an_at(spec, path, host):
    assert MergeInput.parse(spec) == MergeInput(Path(path), host)


@pytest.mark.parametrize("spec", ["b.json@host b", "@hostb", "b.json@-x", "b.json@"])
def test_a_bad_merge_input_is_a_clear_error(spec):
    with pytest.raises(MergeError, match="expected FILE or FILE@HOST"):
        MergeInput.parse(spec)


@pytest.mark.parametrize("uri, remote", [
    ("qemu:///system", "qemu+ssh://hostb/system"),
    ("qemu+tcp:///system", "qemu+tcp://hostb/system"),
    ("qemu:///embed?root=/var/tmp/x/libvirt", "qemu+ssh://hostb/embed?root=/var/tmp/x/libvirt"),
    ("qemu+ssh://lab/system", "qemu+ssh://lab/system"),
])
def test_remote_uri(uri, remote):
    assert merge.remote_uri(uri, "hostb") == remote


# --- testbed up --first-guest, --ssh-bind ---------------------------------------------------------------------


def test_first_guest_numbers_names_from_there_and_is_checked(tmp_path):
    assert guest_names(2, 3) == [("iso-c", "c"), ("iso-d", "d")]
    opts = UpOptions(state_dir=tmp_path, guests=2, first_guest=15)
    opts.validate()
    assert opts.fingerprint()["first_guest"] == 15 and "first_guest" not in UpOptions(tmp_path).fingerprint()
    with pytest.raises(ValueError, match="--first-guest must be 1..15 with --guests 2"):
        UpOptions(state_dir=tmp_path, guests=2, first_guest=16).validate()
    with pytest.raises(ValueError, match="--ssh-bind must be an IPv4 address of this host, not 'hostb'"):
        UpOptions(state_dir=tmp_path, ssh_bind="hostb").validate()


# --- the CLI ----------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "PYTHONPATH": ":".join(sys.path)})


def test_cli_merge_writes_the_topology_and_says_what_it_changed(tmp_path):
    a, b = two_hosts(tmp_path)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    out = tmp_path / "mh" / "topology.json"
    res = run_cli("topology", "merge", str(tmp_path / "a.json"), f"{tmp_path / 'b.json'}@hostb", "--out", str(out),
                  "--ssh-key", "hostb=rel/key")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"merged 4 guests of 2 hosts into {out}" in res.stdout and "native peer" in res.stdout
    merged = Topology.load(out)
    assert merged.ssh_endpoint(merged.guest("iso-d")).key == str(Path("rel/key").absolute())
    res = run_cli("topology", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out))
    assert res.returncode == 1 and "are both on this host" in res.stdout and "Traceback" not in res.stderr
    res = run_cli("topology", "merge", str(tmp_path / "a.json"), f"{tmp_path / 'b.json'}@hostb", "--out",
                  str(tmp_path / "x.json"))
    assert res.returncode == 1 and "must be named topology.json" in res.stdout
    res = run_cli("topology", "merge", str(tmp_path / "a.json"), f"{tmp_path / 'b.json'}@hostb", "--out", str(out),
                  "--ssh-key", "hostb")
    assert res.returncode == 1 and "expected HOST=PATH" in res.stdout


def test_cli_down_and_restart_refuse_a_merged_topology_and_touch_nothing(tmp_path):
    a, b = two_hosts(tmp_path)
    merged, _ = merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), b)])
    merged.save(tmp_path / "topology.json")
    for cmd in ("down", "restart-device-model", "up"):
        res = run_cli(cmd, "--state-dir", str(tmp_path))
        assert res.returncode == 1, res.stdout
        assert "is a merged topology" in res.stdout and f"testbed {cmd} --state-dir <its state dir>" in res.stdout
    assert Topology.load(tmp_path / "topology.json") == merged


def test_ssh_argv_takes_the_guests_endpoint_and_key(tmp_path):
    a, b = two_hosts(tmp_path)
    merged, _ = merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "hostb"), b)],
                            {"hostb": "/keys/b"})
    assert cli.ssh_argv(merged, merged.guest("iso-c")) == [
        "ssh", "-i", "/keys/b", "-p", "22002", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "--", "root@hostb"]
    assert cli.ssh_argv(merged, merged.guest("iso-a"))[2:4] == ["/k", "-p"]


def test_status_of_a_merged_topology_shows_hosts_and_tries_each_guest_over_ssh(tmp_path):
    a, b = two_hosts(tmp_path)
    a.state_dir = str(tmp_path / "a")  # no supervisor there
    merged, _ = merge.merge([(MergeInput(Path("a.json")), a), (MergeInput(Path("b.json"), "127.0.0.1"), b)])
    for g in merged.guests:
        g.ssh_port = 1  # nothing listens: refused at once
    merged.save(tmp_path / "topology.json")
    report = lifecycle_status.status(tmp_path)
    assert report.guest_states == {"iso-a": "unknown (no supervisor)", "iso-b": "unknown (no supervisor)",
                                   "iso-c": "on 127.0.0.1", "iso-d": "on 127.0.0.1"}
    answers = lifecycle_status.ssh_reachable(merged, timeout_s=2.0)
    assert set(answers) == {"iso-a", "iso-b", "iso-c", "iso-d"}
    assert all(v.startswith("no: ") for v in answers.values()), answers
    res = run_cli("status", "--state-dir", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "merged from 2 hosts" in res.stdout and "(vhea on 127.0.0.1)" in res.stdout
    assert "no: Unable to connect to port 1 on 127.0.0.1" in res.stdout
    assert "libvirt of iso-c, iso-d: qemu+ssh://127.0.0.1/embed?root=/var/tmp/b/libvirt (127.0.0.1)" in res.stdout
    assert "libvirt of iso-a, iso-b: qemu:///embed?root=/var/tmp/a/libvirt (this host)" in res.stdout


def test_ssh_bind_is_where_the_domain_forwards_ssh_from(tmp_path):
    import xml.etree.ElementTree as ET

    from test_testbed_domain import QEMU_NS, spec

    from testbed.domain import render_domain

    root = ET.fromstring(render_domain(spec(tmp_path, ssh_bind="192.168.7.2")))
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    assert "user,id=mgmt0,net=10.0.2.0/24,hostfwd=tcp:192.168.7.2:22201-:22" in args
    with pytest.raises(ValueError, match="is not an IPv4 address"):
        render_domain(spec(tmp_path, ssh_bind="0.0.0.0,hostfwd=tcp::1-:22"))

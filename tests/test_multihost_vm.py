"""What one machine allows of a testbed across hosts: a merged topology of one testbed whose iso-d is named as
on another host (its own libvirt URI, SSH address and key), checked with `testbed status` and run with
`fab run-benchmark`. The guests are numbered from 3 (`testbed up --first-guest 3`, as a second host's would be)
and their SSH is forwarded from 127.0.0.2 (`testbed up --ssh-bind`), which stands for the other host's address.
The "remote" guest's host CPU must be null with the reason, everything else as on one host."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket

import pytest
from vm_helpers import BIN, run

from testbed.state import Topology

pytestmark = pytest.mark.vm

OTHER = "127.0.0.2"  # the "other host": a loopback address this machine answers on, not 127.0.0.1
PLAYBOOK = """\
version: 1
name: multihost
tests:
  - name: stream-across
    test: stream
    size: 1448
    duration: 4
    warmup: 1
    verify: true
    client: iso-d
    server: iso-c
"""


@pytest.fixture(scope="module")
def testbed_up_args() -> list[str]:
    return ["--no-peer", "--ssh-bind", OTHER, "--first-guest", "3"]


def test_a_playbook_runs_on_a_merged_topology_and_records_what_this_host_cannot_see(testbed, topology, tmp_path):
    assert [(g.name, g.port, g.data_ip) for g in topology.guests] == [("iso-c", "c", "10.10.0.3"),
                                                                      ("iso-d", "d", "10.10.0.4")]
    assert {g.ssh_host for g in topology.guests} == {OTHER}
    with pytest.raises(OSError):  # the forward listens on --ssh-bind only
        socket.create_connection(("127.0.0.1", topology.guests[1].ssh_port), timeout=5).close()
    # Each "host" its topology file, as `testbed up` on two machines would have written them.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    dataclasses.replace(topology, guests=[topology.guest("iso-c")]).save(a)
    dataclasses.replace(topology, guests=[topology.guest("iso-d")]).save(b)
    key = tmp_path / "keys" / "other"
    key.parent.mkdir()
    shutil.copyfile(topology.ssh_key, key)
    key.chmod(0o600)
    merged_dir = tmp_path / "merged"
    out = run([str(BIN / "testbed"), "topology", "merge", str(a), f"{b}@{OTHER}", "--ssh-key", f"{OTHER}={key}",
               "--out", str(merged_dir / "topology.json")], timeout=60, env=testbed.env).stdout
    assert "merged 2 guests of 2 hosts" in out
    merged = Topology.load(merged_dir / "topology.json")
    iso_d = merged.guest("iso-d")
    assert (iso_d.uri, iso_d.ssh_key) == (f"qemu+ssh://{OTHER}/embed?root={testbed.state}/libvirt", str(key))

    status = run([str(BIN / "testbed"), "status", "--state-dir", str(merged_dir)], timeout=120, env=testbed.env).stdout
    assert "merged from 2 hosts" in status and f"on {OTHER}" in status and status.count("ok (") == 2, status

    (tmp_path / "pb.yaml").write_text(PLAYBOOK)
    results = tmp_path / "results"
    run([str(BIN / "fab"), "run-benchmark", "--playbook", str(tmp_path / "pb.yaml"), "--state-dir", str(merged_dir),
         "--results-dir", str(results), "--set", "duration=1", "--set", "repeats=1"], timeout=600, env=testbed.env)
    record = json.loads(next(results.glob("*/run.json")).read_text())
    (case,) = record["cases"]
    assert case["status"] == "ok", case.get("error")
    assert case["isoperf"]["verified"] is True and case["isoperf"]["bytes"] > 0
    cpu = case["host_cpu"]["guests"]
    assert cpu["iso-d"]["vcpu_seconds"] is None and "runs on another host (libvirt URI qemu+ssh://127.0.0.2/" \
        in cpu["iso-d"]["error"]
    assert cpu["iso-c"]["error"] is None and cpu["iso-c"]["vcpu_seconds"] is not None  # this host's: measured
    assert case["host_cpu"]["client_messages_per_host_cpu_s"] is None  # the client is iso-d
    assert case["control"]["path"] == "data" and "iso-d runs on 127.0.0.2" in case["control"]["why"]
    assert case["device_model"]["error"] == "iso-d runs on 127.0.0.2: its vhea port is not this host's"
    guests = record["metadata"]["guests"]
    assert guests["iso-d"]["host"] == OTHER and guests["iso-d"]["ssh"] == f"root@{OTHER}:{iso_d.ssh_port}"
    assert guests["iso-c"]["host"] is None
    assert [m["host"] for m in record["topology"]["merged_from"]] == [None, OTHER]
    res = run([str(BIN / "testbed"), "down", "--state-dir", str(merged_dir)], timeout=60, env=testbed.env,
              check=False)
    assert res.returncode == 1 and "is a merged topology" in res.stdout

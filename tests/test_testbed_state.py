"""testbed.state: the topology file that `testbed up` writes and everything else reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.state import DeviceModelInfo, GuestInfo, Topology


def topology(tmp_path: Path) -> Topology:
    return Topology(
        state_dir=str(tmp_path), uri="qemu:///embed?root=/x", accel="tcg", ssh_user="root", ssh_key="/k",
        image={"recipe_hash": "abc"}, device_model=DeviceModelInfo(str(tmp_path / "vhea"), 42, ["a", "b"], "/l"),
        guests=[GuestInfo("iso-a", "127.0.0.1", 2222, "10.10.0.1", "52:54:00:10:00:01", "a", 2, 1024,
                          "52:54:00:ff:00:01", "/c")],
    )


def test_topology_round_trip(tmp_path):
    path = tmp_path / "topology.json"
    topology(tmp_path).save(path)
    back = Topology.load(path)
    assert back == topology(tmp_path)
    assert back.guest("iso-a").ssh_port == 2222
    with pytest.raises(KeyError, match="no guest named 'iso-z'.*iso-a"):
        back.guest("iso-z")


def test_topology_rejects_other_versions_and_missing_file(tmp_path):
    path = tmp_path / "topology.json"
    with pytest.raises(FileNotFoundError, match="run `testbed up`"):
        Topology.load(path)
    raw = json.loads(json.dumps({"version": 99}))
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="topology version 99"):
        Topology.load(path)


def test_topology_keeps_icount_and_an_older_file_without_it_loads_as_off(tmp_path):
    from testbed import icount

    path = tmp_path / "topology.json"
    topo = topology(tmp_path)
    topo.icount = icount.parse("3").record()
    topo.save(path)
    assert json.loads(path.read_text())["icount"]["qemu_arg"] == "shift=3"
    assert Topology.load(path).icount == {"shift": 3, "sleep": True, "align": False, "qemu_arg": "shift=3",
                                          "tcg_thread": "single"}
    raw = json.loads(path.read_text())
    del raw["icount"]  # a file written before --icount existed
    path.write_text(json.dumps(raw))
    assert Topology.load(path).icount is None

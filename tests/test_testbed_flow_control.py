"""The testbed starts vhea with 802.3x flow control on every port unless `testbed up --no-flow-control`."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from testbed import devicemodel
from testbed.cli import build_parser
from testbed.lifecycle.options import UpOptions
from testbed.lifecycle.restart import restart_device_model
from testbed.state import DeviceModelInfo, Topology


def test_up_options_turn_flow_control_on_by_default_and_a_change_is_not_reused():
    opts = UpOptions(state_dir=Path("/tmp"))
    assert opts.flow_control is True and opts.pause_max_us is None
    fp = opts.fingerprint()
    assert fp["flow_control"] is True and fp["pause_max_us"] is None
    assert UpOptions(state_dir=Path("/tmp"), flow_control=False).fingerprint() != fp
    assert UpOptions(state_dir=Path("/tmp"), pause_max_us=20000).fingerprint() != fp
    UpOptions(state_dir=Path("/tmp"), pause_max_us=20000).validate()
    with pytest.raises(ValueError, match="--pause-max-us must be 1..1000000"):
        UpOptions(state_dir=Path("/tmp"), pause_max_us=0).validate()
    with pytest.raises(ValueError, match="goes with flow control"):
        UpOptions(state_dir=Path("/tmp"), flow_control=False, pause_max_us=100).validate()


def test_cli_up_has_no_flow_control_and_pause_max_us():
    args = build_parser().parse_args(["up"])
    assert args.no_flow_control is False and args.pause_max_us is None
    args = build_parser().parse_args(["up", "--no-flow-control"])
    assert args.no_flow_control is True
    assert build_parser().parse_args(["up", "--pause-max-us", "20000"]).pause_max_us == 20000


def test_device_model_runs_with_flow_control_and_keeps_it_across_a_restart(tmp_path):
    sock_dir, log = tmp_path / "vhea", tmp_path / "vhea.log"
    old = devicemodel.start(sock_dir, ["a", "b"], 1, log, flow_control=True, pause_max_us=2500)
    new = 0
    try:
        for p in devicemodel.stats(sock_dir)["ports"].values():
            assert (p["pause"]["on"], p["pause"]["max_us"]) == (True, 2500)
        topo = Topology(state_dir=str(tmp_path), uri="qemu:///embed?root=/x", accel="tcg", ssh_user="root",
                        ssh_key="/k", image={}, device_model=DeviceModelInfo(str(sock_dir), old, ["a", "b"], str(log)),
                        guests=[], options=UpOptions(state_dir=tmp_path, pause_max_us=2500).fingerprint())
        topo.save(tmp_path / "topology.json")
        new = restart_device_model(tmp_path, Console(file=open("/dev/null", "w")))
        for p in devicemodel.stats(sock_dir)["ports"].values():
            assert (p["pause"]["on"], p["pause"]["max_us"]) == (True, 2500)
    finally:
        for pid in (old, new):
            if pid:
                devicemodel.stop(pid)


def test_device_model_without_flow_control(tmp_path):
    sock_dir = tmp_path / "vhea"
    pid = devicemodel.start(sock_dir, ["a", "b"], 1, tmp_path / "vhea.log")
    try:
        assert not any(p["pause"]["on"] for p in devicemodel.stats(sock_dir)["ports"].values())
    finally:
        devicemodel.stop(pid)

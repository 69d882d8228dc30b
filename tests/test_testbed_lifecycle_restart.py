"""testbed.lifecycle.restart: `testbed restart-device-model` replaces vhea and records the new one."""

from __future__ import annotations

from testbed import devicemodel
from testbed.state import DeviceModelInfo, Topology


def test_restart_device_model_replaces_the_process_and_records_it(tmp_path):
    """Without guests: the old vhea goes, a new one serves the same port sockets, topology.json points at it."""
    from rich.console import Console

    from testbed.lifecycle.restart import restart_device_model

    sock_dir, log = tmp_path / "vhea", tmp_path / "vhea.log"
    old = devicemodel.start(sock_dir, ["a", "b"], 2, log)
    new = 0
    try:
        topo = Topology(state_dir=str(tmp_path), uri="qemu:///embed?root=/x", accel="tcg", ssh_user="root",
                        ssh_key="/k", image={}, device_model=DeviceModelInfo(str(sock_dir), old, ["a", "b"], str(log)),
                        guests=[], options={"queues": 2})
        topo.save(tmp_path / "topology.json")
        new = restart_device_model(tmp_path, Console(file=open("/dev/null", "w")))
        assert new != old and not devicemodel.pid_alive(old)
        assert devicemodel.is_vhea(new)
        assert Topology.load(tmp_path / "topology.json").device_model.pid == new
        ports = devicemodel.stats(sock_dir)["ports"]
        assert sorted(ports) == ["a", "b"] and not any(p["connected"] for p in ports.values())
    finally:
        for pid in (old, new):
            if pid:
                devicemodel.stop(pid)

"""`testbed restart-device-model`: a new `vhea serve` with the same arguments, the guests reconnect to it.

It shows that the guests' QEMUs reconnect and their TCP connections survive a device model restart.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from testbed import devicemodel, peer
from testbed.lifecycle.classifier_settings import publish_classifier_settings
from testbed.lifecycle.down import VHEA_PID_FILE
from testbed.state import Topology, topology_path


def restart_device_model(sdir: Path, console: Console, reconnect_timeout_s: float = 30.0,
                         provide_peer_device: peer.DeviceProvider | None = None) -> int:
    """Stop the testbed's `vhea serve` (if it still runs) and start it again with the same arguments.

    The guests' QEMUs are vhost-user clients with `reconnect`, so they replay the whole handshake with the new
    back-end and traffic resumes; TCP connections in the guests survive a gap of a few seconds. Rules and RSS
    settings made at run time with `vhea rule` / `vhea rss` are not kept (a new process starts with the
    defaults), so the guests' classifier files are written again. The native peer's TAP device went with the
    old process: the new one makes it again (or `provide_peer_device`, in tests) and it goes back into the
    peer's namespace, which stays with what runs in it. Returns the new PID.
    """
    tpath = topology_path(sdir)
    if not tpath.exists():
        raise FileNotFoundError(f"no testbed is up in {sdir}")
    topo = Topology.load(tpath)
    dm = topo.device_model
    if devicemodel.pid_alive(dm.pid) and devicemodel.is_vhea(dm.pid):
        devicemodel.stop(dm.pid)
        console.print(f"stopped the device model (pid {dm.pid})")
    else:
        console.print(f"the device model (pid {dm.pid}) was not running")
    # a topology.json from before flow control existed: its vhea ran without it
    new_pid = devicemodel.start(Path(dm.socket_dir), dm.ports, int(topo.options.get("queues", 1)), Path(dm.log),
                                pid_file=sdir / VHEA_PID_FILE, flow_control=bool(topo.options.get("flow_control")),
                                pause_max_us=topo.options.get("pause_max_us"))
    topo.device_model.pid = new_pid
    topo.save(tpath)  # `testbed down` must stop the new one
    console.print(f"started the device model again (pid {new_pid})")
    if topo.peer is not None:
        sock_dir, port = Path(dm.socket_dir), topo.peer.port
        topo.peer = peer.attach(topo.peer, provide_peer_device or (
            lambda ifname: devicemodel.add_tap_port(sock_dir, port, ifname)))
        topo.save(tpath)
        console.print(f"the peer's TAP port is back in namespace {topo.peer.namespace}")
    if topo.guests:
        with console.status("waiting for the guests' QEMUs to reconnect"):
            deadline = time.monotonic() + reconnect_timeout_s
            ports: dict = {}
            while time.monotonic() < deadline:
                ports = devicemodel.stats(Path(dm.socket_dir))["ports"]
                if all(ports.get(g.port, {}).get("connected") for g in topo.guests):
                    break
                time.sleep(0.25)
            else:
                missing = [g.port for g in topo.guests if not ports.get(g.port, {}).get("connected")]
                raise TimeoutError(f"ports {', '.join(missing)} did not reconnect within {reconnect_timeout_s:.0f} s")
        console.print("every guest reconnected")
        publish_classifier_settings(topo, console)
    return new_pid

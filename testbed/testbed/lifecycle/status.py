"""What runs of the testbed: each guest's libvirt state and the device model's counters.

`testbed status` shows it; `up` uses it to decide whether a running testbed can be reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from testbed import devicemodel, peer, supervisor
from testbed.lifecycle.down import find_leftovers
from testbed.state import Topology, topology_path


class StatusReport(NamedTuple):
    """The topology, each guest's libvirt state by name, and the device model's counters (None: no answer)."""

    topology: Topology
    guest_states: dict[str, str]
    device_model_counters: dict | None


def status(sdir: Path) -> StatusReport:
    """The topology, each guest's libvirt state, and the device model's counters (or None)."""
    tpath = topology_path(sdir)
    if not tpath.exists() and (left := find_leftovers(sdir)):
        raise FileNotFoundError(f"no testbed is up: {tpath} does not exist (a `testbed up` was interrupted?), but"
                                f" these still run: {left.describe()}; `testbed down` stops them")
    topo = Topology.load(tpath)
    try:
        states = supervisor.request(sdir, "status")["domains"]
    except supervisor.SupervisorError:
        states = {g.name: "unknown (no supervisor)" for g in topo.guests}
    try:
        counters = devicemodel.stats(Path(topo.device_model.socket_dir))
    except (devicemodel.DeviceModelError, OSError, ValueError):
        counters = None
    return StatusReport(topo, states, counters)


def healthy(sdir: Path) -> Topology | None:
    """The running testbed of `sdir` if every guest runs, the device model answers and the peer namespace (if it
    has a peer) exists, else None."""
    try:
        topo, states, counters = status(sdir)
    except (OSError, ValueError):
        return None
    ok = counters is not None and all(states.get(g.name) == "running" for g in topo.guests)
    ok = ok and (topo.peer is None or peer.exists(topo.peer.namespace))
    return topo if ok else None

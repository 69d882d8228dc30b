"""What runs of the testbed: each guest's libvirt state and the device model's counters.

`testbed status` shows it; `up` uses it to decide whether a running testbed can be reused. Of a merged
topology (`testbed topology merge`) only the guests of this host are asked of its supervisor (in the state dir
the topology names); a guest on another host is shown by its host, and `ssh_reachable` tries each guest.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import paramiko

from testbed import devicemodel, peer, ssh, supervisor
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
    sup_dir = Path(topo.state_dir) if topo.merged_from else sdir
    try:
        domains = supervisor.request(sup_dir, "status")["domains"]
        states = {g.name: domains.get(topo.domain_name(g), "not in the supervisor") for g in topo.guests}
    except supervisor.SupervisorError:
        states = {g.name: "unknown (no supervisor)" for g in topo.guests}
    for g in topo.guests:
        if (host := topo.guest_host(g)) is not None:
            states[g.name] = f"on {host}"
    try:
        counters = devicemodel.stats(Path(topo.device_model.socket_dir))
    except (devicemodel.DeviceModelError, OSError, ValueError):
        counters = None
    return StatusReport(topo, states, counters)


def ssh_reachable(topo: Topology, timeout_s: float = 5.0) -> dict[str, str]:
    """Each guest's answer over SSH with its own endpoint and credentials: "ok (0.4 s)" or why not."""

    def probe(g) -> str:
        e = topo.ssh_endpoint(g)
        t0 = time.monotonic()
        try:
            client = ssh.connect(e.host, e.port, e.user, Path(e.key), timeout_s=timeout_s)
            try:
                code, _, _ = ssh.run(client, "true", timeout_s=timeout_s)
            finally:
                client.close()
        except (OSError, paramiko.SSHException, EOFError) as err:
            return f"no: {str(err).removeprefix('[Errno None] ') or type(err).__name__}"
        return f"ok ({time.monotonic() - t0:.1f} s)" if code == 0 else f"no: `true` exited {code}"

    with ThreadPoolExecutor(max(1, len(topo.guests))) as pool:
        return dict(zip([g.name for g in topo.guests], pool.map(probe, topo.guests), strict=True))


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

"""Where a running testbed keeps its files, and the topology file that describes it.

The topology file is the contract between `testbed up` and everything that runs
experiments on the testbed (the harness, `testbed ssh`, tests): it says which guests
exist, how to reach them and where the device model listens.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/tmp/isostack-testbed")
TOPOLOGY_VERSION = 1


def state_dir(explicit: str | Path | None = None) -> Path:
    """The state dir: an explicit path, else $ISOSTACK_STATE_DIR, else the default."""
    if explicit:
        return Path(explicit).absolute()
    env = os.environ.get("ISOSTACK_STATE_DIR")
    return Path(env).absolute() if env else DEFAULT_STATE_DIR


def cache_root() -> Path:
    """Downloads and images live outside any clone so fresh clones (and CI) reuse them."""
    env = os.environ.get("ISOSTACK_CACHE_DIR")
    if env:
        return Path(env).absolute()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "isostack-testbed"


@dataclass
class GuestInfo:
    name: str
    ssh_host: str
    ssh_port: int
    data_ip: str
    data_mac: str
    port: str
    vcpus: int
    memory_mib: int
    mgmt_mac: str
    console_log: str
    # isoperf's control port (guest port 5701) forwarded by the management NIC: on 127.0.0.1 (other guests
    # reach it at their gateway 10.0.2.2) and on the peer's management link (0: not forwarded).
    control_port: int = 0


@dataclass
class DeviceModelInfo:
    socket_dir: str
    pid: int
    ports: list[str]
    log: str


@dataclass
class PeerInfo:
    """The native peer (testbed.peer): a network namespace on the host on the guests' data subnet."""

    namespace: str  # `ip netns exec <namespace> ...` runs there
    interface: str  # the TAP device of the device model's port, inside the namespace
    address: str  # its IPv4 address, e.g. 10.10.0.254
    prefix_len: int
    port: str  # the device model's port name ("peer")
    mac: str = ""
    # The management link (a veth pair, testbed.peer.add_mgmt_link) that carries isoperf's control connection
    # off the link under test: the host's end and the peer's end ("": a topology from before it).
    mgmt_interface: str = ""
    mgmt_host_address: str = ""
    mgmt_address: str = ""


@dataclass
class Topology:
    state_dir: str
    uri: str
    accel: str
    ssh_user: str
    ssh_key: str
    image: dict
    device_model: DeviceModelInfo
    guests: list[GuestInfo] = field(default_factory=list)
    supervisor_pid: int = 0  # the process that holds the libvirt connection (testbed.supervisor)
    options: dict = field(default_factory=dict)  # what `testbed up` was asked for, to reuse a running testbed
    version: int = TOPOLOGY_VERSION
    peer: PeerInfo | None = None  # None: brought up without the native peer (and every topology file before it)
    icount: dict | None = None  # QEMU's -icount (testbed.icount.Icount.record); None: off (and older files)

    def guest(self, name: str) -> GuestInfo:
        for g in self.guests:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.guests) or "none"
        raise KeyError(f"no guest named {name!r} in the testbed (guests: {known})")

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Topology:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no testbed is up: {path} does not exist (run `testbed up`)") from None
        if raw.get("version") != TOPOLOGY_VERSION:
            raise ValueError(f"{path}: topology version {raw.get('version')!r}, expected {TOPOLOGY_VERSION}")
        raw["device_model"] = DeviceModelInfo(**raw["device_model"])
        raw["guests"] = [GuestInfo(**g) for g in raw["guests"]]
        raw["peer"] = PeerInfo(**raw["peer"]) if raw.get("peer") else None
        return cls(**raw)


def topology_path(sdir: Path) -> Path:
    return sdir / "topology.json"

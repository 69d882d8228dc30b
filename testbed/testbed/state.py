"""Where a running testbed keeps its files, and the topology file that describes it.

The topology file is the contract between `testbed up` and everything that runs
experiments on the testbed (the harness, `testbed ssh`, tests): it says which guests
exist, how to reach them and where the device model listens. A guest may run on another
host (`testbed topology merge`, docs/testbed.md "Guests on other hosts"): its own libvirt
URI and SSH user and key then stand beside the topology's. The file is checked field by
field on load, since a merged or hand-edited one is input the harness must not crash on.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

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
    # A guest on another host (a merged topology): its libvirt URI and SSH credentials where they differ from
    # the topology's (None: the topology's), and its libvirt domain name where a merge renamed it (None: name).
    uri: str | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class SshEndpoint:
    """How to reach one guest over SSH: the guest's host and port with its own or the topology's credentials."""

    host: str
    port: int
    user: str
    key: str


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
    # `testbed topology merge`: the hosts' files it was made from (file, host, state_dir, uri, guests); None: the
    # topology of one `testbed up`. Its own processes (device model, peer, supervisor) are the base host's.
    merged_from: list[dict] | None = None

    def guest(self, name: str) -> GuestInfo:
        for g in self.guests:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.guests) or "none"
        raise KeyError(f"no guest named {name!r} in the testbed (guests: {known})")

    def guest_uri(self, g: GuestInfo) -> str:
        """The libvirt URI of the host that runs `g`."""
        return g.uri or self.uri

    def ssh_endpoint(self, g: GuestInfo) -> SshEndpoint:
        return SshEndpoint(g.ssh_host, g.ssh_port, g.ssh_user or self.ssh_user, g.ssh_key or self.ssh_key)

    def domain_name(self, g: GuestInfo) -> str:
        """`g`'s libvirt domain name on its host (a merge may have renamed the guest in the topology)."""
        return g.domain or g.name

    def guest_host(self, g: GuestInfo) -> str | None:
        """The other host that runs `g` (from its libvirt URI), or None when it runs on this one."""
        return uri_host(self.guest_uri(g))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Topology:
        """The topology of `path`; a TopologyError (a ValueError) names the file, the guest and the field of
        anything that is not a well-formed topology."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"no testbed is up: {path} does not exist (run `testbed up`)") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise TopologyError(f"{path}: not JSON: {e}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: object, where: str) -> Topology:
        """A topology from its JSON form, checked (`where` names the file in errors)."""
        if not isinstance(raw, dict):
            raise TopologyError(f"{where}: a topology is a JSON object, not {type(raw).__name__}")
        if raw.get("version") != TOPOLOGY_VERSION:
            raise TopologyError(f"{where}: topology version {raw.get('version')!r}, expected {TOPOLOGY_VERSION}")
        topo = _build(cls, raw, where)
        _check_guests(topo, where)
        return topo


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the file, the guest and the field."""


_GUEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # also a file name: no "/", no leading "."
_NESTED: dict[str, type] = {}  # filled below: the dataclasses a field may hold


def _build(cls: type, raw: dict, where: str) -> typing.Any:
    """An instance of dataclass `cls` from `raw`, each field's type checked; unknown and missing fields named."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise TopologyError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        if name not in raw:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise TopologyError(f"{where}: missing field {name!r}")
        kwargs[name] = _value(raw[name], hints[name], f"{where}: {name}")
    return cls(**kwargs)


def _value(value: object, tp: object, where: str) -> object:
    """`value` checked against the annotation `tp` (str, int, dict, list[X], X | None, a nested dataclass)."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(value, inner, where)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise TopologyError(f"{where}: expected a list, got {_show(value)}")
        return [_value(v, args[0], f"{where}[{i}]" + _named(v)) for i, v in enumerate(value)]
    if tp in _NESTED.values():
        if not isinstance(value, dict):
            raise TopologyError(f"{where}: expected an object, got {_show(value)}")
        return _build(tp, value, where)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TopologyError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp in (str, dict) and isinstance(value, tp):
        return value
    raise TopologyError(f"{where}: expected {'a string' if tp is str else 'an object'}, got {_show(value)}")


def _named(item: object) -> str:
    """" (iso-a)" for an object with a name: errors name the guest, not only its index."""
    name = item.get("name") if isinstance(item, dict) else None
    return f" ({_show(name)[1:-1]})" if isinstance(name, str) else ""


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_guests(topo: Topology, where: str) -> None:
    """What the types alone do not say: usable names, ports, addresses and URIs, no name or data IP twice."""
    _check_uri(topo.uri, f"{where}: uri")
    seen_names: set[str] = set()
    seen_ips: dict[str, str] = {}
    for i, g in enumerate(topo.guests):
        label = f"{where}: guests[{i}]"
        if not _GUEST_NAME.match(g.name):
            raise TopologyError(f"{label}: name {g.name!r} is not a guest name (letters, digits, '.', '_', '-';"
                                f" at most 64)")
        label = f"{where}: guest {g.name}"
        if g.name in seen_names:
            raise TopologyError(f"{label}: the name is used by two guests")
        seen_names.add(g.name)
        if not g.ssh_host or g.ssh_host.startswith("-") or any(c.isspace() for c in g.ssh_host):
            raise TopologyError(f"{label}: ssh_host {g.ssh_host!r} is not a host name or address")
        for key in ("ssh_port", "control_port"):
            value = getattr(g, key)
            if not (1 if key == "ssh_port" else 0) <= value <= 65535:
                raise TopologyError(f"{label}: {key} {value} is out of range")
        try:
            ip = str(ipaddress.IPv4Address(g.data_ip))
        except ValueError:
            raise TopologyError(f"{label}: data_ip {g.data_ip!r} is not an IPv4 address") from None
        if ip in seen_ips:
            raise TopologyError(f"{label}: data_ip {ip} is also {seen_ips[ip]}'s")
        seen_ips[ip] = g.name
        if g.vcpus < 1:
            raise TopologyError(f"{label}: vcpus {g.vcpus} must be at least 1")
        if g.uri is not None:
            _check_uri(g.uri, f"{label}: uri")
        for key in ("ssh_user", "ssh_key", "domain"):
            value = getattr(g, key)
            if value == "":
                raise TopologyError(f"{label}: {key} is empty (leave it out to use the topology's)")
            if key == "ssh_user" and value is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
                raise TopologyError(f"{label}: ssh_user {value!r} is not a user name")
        if g.domain is not None and not _GUEST_NAME.match(g.domain):
            raise TopologyError(f"{label}: domain {g.domain!r} is not a libvirt domain name this testbed makes")


def _check_uri(uri: str, where: str) -> None:
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        parts = None
    if parts is None or not parts.scheme or any(c.isspace() for c in uri):
        raise TopologyError(f"{where}: {uri!r} is not a libvirt URI (e.g. qemu:///system, qemu+ssh://host/system)")


def uri_host(uri: str) -> str | None:
    """The other host a libvirt URI names (qemu+ssh://root@hostb/system: hostb), None for this host's.
    A remote transport without a host name (qemu+ssh:///system) still goes through another process: its
    scheme is returned, as testbed.hostcpu treats it as not visible here."""
    parts = urlsplit(uri)
    if parts.hostname:
        return parts.hostname
    return parts.scheme if "+" in parts.scheme else None


_NESTED.update({c.__name__: c for c in (DeviceModelInfo, GuestInfo, PeerInfo)})


def topology_path(sdir: Path) -> Path:
    return sdir / "topology.json"

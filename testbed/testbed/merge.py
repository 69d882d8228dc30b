"""One topology from the topologies `testbed up` wrote on several hosts: `testbed topology merge`.

Each host runs its own testbed (its guests, its vhea); the hosts' data networks are joined by the user (a TAP
port of vhea on a bridge with a NIC between the hosts: docs/testbed.md "Guests on other hosts"). The merged
topology lists every guest with the libvirt URI and SSH endpoint it is reached by from here, so the harness
can run a playbook across the hosts. The host that runs the harness is the base: the merged topology's
device model, native peer, options and state dir are its own (they are local processes). Pure: files are
read and written by the CLI.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from testbed.state import GuestInfo, Topology, TopologyError, uri_host

# Options that must agree between the hosts: the harness checks a playbook against one value of each.
_SAME_OPTIONS = ("queues",)


class MergeError(ValueError):
    """Topologies that cannot be merged; the message names the files and guests."""


@dataclass(frozen=True)
class MergeInput:
    """One host's topology file, and the host that runs its guests as seen from here (None: this host)."""

    path: Path
    host: str | None = None

    @classmethod
    def parse(cls, spec: str) -> MergeInput:
        """FILE (guests on this host) or FILE@HOST (guests on HOST, reached at HOST)."""
        path, at, host = spec.rpartition("@")
        if not at or "/" in host:
            return cls(Path(spec))
        if not path or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?", host):
            raise MergeError(f"{spec!r}: expected FILE or FILE@HOST (a host name or address after the @)")
        return cls(Path(path), host)


def remote_uri(uri: str, host: str) -> str:
    """`uri` of a libvirt driver as reached from another machine: qemu:///system on hostb is
    qemu+ssh://hostb/system. An embedded driver (qemu:///embed) has no remote form; its URI is rewritten the
    same way only to name the host (nothing here connects to libvirt through it)."""
    parts = urlsplit(uri)
    if parts.hostname:
        return uri
    scheme = parts.scheme if "+" in parts.scheme else f"{parts.scheme}+ssh"
    return urlunsplit((scheme, host, parts.path, parts.query, parts.fragment))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _label(text: str) -> str:
    """A host name as a guest-name suffix (letters, digits, '-')."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "host"


def merge(topologies: list[tuple[MergeInput, Topology]],
          ssh_keys: dict[str, str] | None = None) -> tuple[Topology, list[str]]:
    """The merged topology and notes for the user (what was renamed, dropped or rewritten).

    The base is the first input on this host (the first input if none is). A guest of an input on another
    host gets that host in its URI and, where its SSH forward is on a loopback address, as its ssh_host;
    `ssh_keys` maps a host to the private key that reaches its guests from here (their key file is on that
    host). A guest name already taken is renamed NAME-HOST (its libvirt domain keeps the name). Two guests
    with one data IP or data MAC are refused: on one data network they would collide.
    """
    if len(topologies) < 2:
        raise MergeError("merging needs at least two topology files")
    ssh_keys = dict(ssh_keys or {})
    notes: list[str] = []
    base_i = next((i for i, (inp, _) in enumerate(topologies) if inp.host is None), 0)
    base_in, base = topologies[base_i]
    if base_in.host is not None:
        notes.append(f"no input is on this host: {base_in.path}'s device model, peer and options are recorded, "
                     f"but its processes are not here")
    _check_agree(topologies, base_in, base)
    unused_keys = set(ssh_keys) - {inp.host for inp, _ in topologies if inp.host}
    if unused_keys:
        raise MergeError(f"--ssh-key for {', '.join(sorted(unused_keys))}: no input is FILE@that host")

    guests: list[GuestInfo] = []
    taken: dict[str, str] = {}  # guest name -> its file
    ips: dict[str, str] = {}  # data IP -> "file guest"
    macs: dict[str, str] = {}
    order = [topologies[base_i]] + [t for i, t in enumerate(topologies) if i != base_i]
    for inp, topo in order:
        where = str(inp.path)
        for g in topo.guests:
            who = f"{where} guest {g.name}"
            if g.data_ip in ips:
                raise MergeError(f"{who} has data IP {g.data_ip}, as {ips[g.data_ip]} has: bring one host's "
                                 f"testbed up with `testbed up --first-guest N` so the hosts' guests number apart")
            if g.data_mac.lower() in macs:
                raise MergeError(f"{who} has data MAC {g.data_mac}, as {macs[g.data_mac.lower()]} has: bring one "
                                 f"host's testbed up with `testbed up --first-guest N`")
            ips[g.data_ip] = macs[g.data_mac.lower()] = who
            new = _placed(g, inp, topo, base, ssh_keys, notes)
            if new.name in taken:
                old = new.name
                new.name = f"{old}-{_label(inp.host or f'{len(taken)}')}"
                new.domain = topo.domain_name(g)
                if new.name in taken or len(new.name) > 64:
                    raise MergeError(f"{who}: the name is taken by {taken[old]} and {new.name!r} cannot be used")
                notes.append(f"{who} is {new.name} in the merged topology (the name is {taken[old]}'s)")
            taken[new.name] = who
            guests.append(new)

    peer = base.peer
    if peer is not None and base_in.host is not None:
        peer = None
    for inp, topo in topologies:
        if topo.peer is not None and topo.peer is not peer:
            notes.append(f"{inp.path}'s native peer ({topo.peer.address}) is left out: the harness runs the peer "
                         f"of this host only" + (" (bring other hosts up with --no-peer)" if inp.host else ""))
    if peer is not None and peer.address in ips:
        raise MergeError(f"the native peer's address {peer.address} is also the data IP of {ips[peer.address]}")

    merged = dataclasses.replace(
        base, guests=guests, peer=peer,
        merged_from=[{"file": str(inp.path.absolute()), "host": inp.host, "state_dir": topo.state_dir,
                      "uri": remote_uri(topo.uri, inp.host) if inp.host else topo.uri,
                      "guests": [g.name for g in topo.guests]} for inp, topo in topologies])
    try:  # the checks of a loaded file, on what will be written
        merged = Topology.from_dict(dataclasses.asdict(merged), "the merged topology")
    except TopologyError as e:
        raise MergeError(str(e)) from None
    return merged, notes


def _check_agree(topologies: list[tuple[MergeInput, Topology]], base_in: MergeInput, base: Topology) -> None:
    for inp, topo in topologies:
        if topo.merged_from:
            raise MergeError(f"{inp.path} is a merged topology: merge the hosts' own files")
        if topo.accel != base.accel:
            raise MergeError(f"{inp.path} runs its guests with {topo.accel} and {base_in.path} with {base.accel}: a "
                             f"run's figures would mix the two")
        for key in _SAME_OPTIONS:
            a, b = (topo.options or {}).get(key, 1), (base.options or {}).get(key, 1)
            if a != b:
                raise MergeError(f"{inp.path} has {key} {a} and {base_in.path} {b}: bring the hosts up alike "
                                 f"(`testbed up --{key} N`)")
    seen: dict[str, Path] = {}
    for inp, _ in topologies:
        key = inp.host or ""
        if key in seen:
            where = f"host {inp.host}" if inp.host else "this host"
            raise MergeError(f"{seen[key]} and {inp.path} are both on {where}: one testbed per host")
        seen[key] = inp.path


def _placed(g: GuestInfo, inp: MergeInput, topo: Topology, base: Topology, ssh_keys: dict[str, str],
            notes: list[str]) -> GuestInfo:
    """A copy of `g` with its URI and SSH endpoint as reached from here, explicit where they differ from the
    base topology's."""
    uri = topo.guest_uri(g)
    ssh_host = g.ssh_host
    key = g.ssh_key or topo.ssh_key
    if inp.host is not None:
        if uri_host(uri) is None:
            uri = remote_uri(uri, inp.host)
        if _is_loopback(ssh_host):
            ssh_host = inp.host
        if inp.host in ssh_keys:
            key = ssh_keys[inp.host]
        elif not Path(key).is_file():
            notes.append(f"{inp.path} guest {g.name}: its SSH key {key} is not on this host: copy it from "
                         f"{inp.host} and merge with --ssh-key {inp.host}=PATH")
    user = g.ssh_user or topo.ssh_user
    return dataclasses.replace(
        g, ssh_host=ssh_host,
        uri=None if uri == base.uri else uri,
        ssh_user=None if user == base.ssh_user else user,
        ssh_key=None if key == base.ssh_key else key,
    )

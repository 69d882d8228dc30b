"""The native peer: a network namespace on the host, joined to the guests' data subnet through a TAP port of
the device model, where the harness runs isoperf natively (the seed's fast remote machine, here).

Why a namespace: the peer's address, routes and TCP counters must be its own (not the host's), and `testbed
down` removes it with everything in it. Why native: a TCG guest as receiver stalls and throws the sender into
RTO back-off; the host's kernel does not.

The namespace is named after the state dir ("isotb-" + a hash), so two testbeds never share one and `testbed
down` finds the namespace of a killed `testbed up` from the state dir alone. The device comes from vhea (a TAP
port: `vhea port add ... --tap`, devicemodel.add_tap_port); it is created DOWN in the host's namespace, and
this module moves it into the peer's namespace, sets the address and brings it and lo up. How the device is
obtained is a parameter, so the namespace steps are tested with a TAP device the test makes itself.

The management link: a veth pair between the host's namespace and the peer's, on a /30 of MGMT_NET picked
from the same hash. isoperf's control connection takes it, never the link under test (on that link the control
messages would sit in RTO back-off with the data): a guest reaches the peer's end through its user-mode
management NIC (QEMU connects from the host's namespace; the guests route MGMT_NET via their gateway), and the
peer reaches a guest's forwarded control port on the host's end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from testbed.state import PeerInfo

NAMESPACE_PREFIX = "isotb-"
INTERFACE_PREFIX = "vh-pr-"  # in the host's namespace until moved: per state dir, so testbeds never collide
PORT = "peer"  # the device model's port name, and the name a playbook gives the peer
HOST_NUMBER = 254  # the peer's address in the guests' data subnet (guests count up from .1)
PREFIX_LEN = 24
MGMT_NET = ipaddress.IPv4Network("10.254.0.0/16")  # the management links' /30s; the guests route it via QEMU
MGMT_HOST_PREFIX = "vh-pm-"  # the veth end in the host's namespace
MGMT_PEER_PREFIX = "vh-pn-"  # the end moved into the peer's namespace
NETNS_DIR = Path("/run/netns")  # where `ip netns add` pins a named namespace

DeviceProvider = Callable[[str], None]  # makes a DOWN device with this name in the host's namespace


class PeerError(RuntimeError):
    """The peer namespace could not be set up or removed; the message says which step."""


def _digest(sdir: Path) -> str:
    return hashlib.sha256(os.fsencode(Path(sdir).absolute())).hexdigest()[:8]


def namespace_name(sdir: Path) -> str:
    """The peer namespace of the testbed in `sdir` ("isotb-" + 8 hex digits of the state dir's path)."""
    return NAMESPACE_PREFIX + _digest(sdir)


def interface_name(sdir: Path) -> str:
    """The peer's TAP device (14 characters: Linux allows 15)."""
    return INTERFACE_PREFIX + _digest(sdir)


def mgmt_addresses(sdir: Path) -> tuple[str, str]:
    """(host end, peer end) of the management link of `sdir`: a /30 of MGMT_NET chosen by the state dir's hash,
    so two testbeds on one host do not share addresses (16,384 links: a clash needs a hash collision)."""
    index = int(_digest(sdir), 16) % (MGMT_NET.num_addresses // 4)
    base = MGMT_NET.network_address + 4 * index
    return str(base + 1), str(base + 2)


def address(subnet: str) -> str:
    """The peer's IPv4 address in a /24 subnet given as its first three octets ("10.10.0" -> 10.10.0.254)."""
    return f"{subnet}.{HOST_NUMBER}"


def unavailable_reason() -> str | None:
    """Why this host cannot make a peer namespace (None: it can): root and iproute2's `ip` are needed."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


def exists(namespace: str) -> bool:
    return (NETNS_DIR / namespace).exists()


def _ip(*args: str, namespace: str | None = None) -> str:
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(f"`{' '.join(argv)}` failed: {e}") from None
    if r.returncode != 0:
        raise PeerError(f"`{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def create(sdir: Path, subnet: str, provide_device: DeviceProvider) -> PeerInfo:
    """Make the peer namespace of `sdir` and attach a device from `provide_device` (attach). A failure removes
    the namespace again and raises."""
    ns = namespace_name(sdir)
    if exists(ns):
        remove(ns)  # one a killed run left behind (`up` runs `down` first; this is the last guard)
    _delete_link(MGMT_HOST_PREFIX + _digest(sdir))
    _ip("netns", "add", ns)
    try:
        info = attach(PeerInfo(namespace=ns, interface=interface_name(sdir), address=address(subnet),
                               prefix_len=PREFIX_LEN, port=PORT), provide_device)
        return add_mgmt_link(info, sdir)
    except BaseException:
        remove(ns)
        raise


def add_mgmt_link(peer: PeerInfo, sdir: Path) -> PeerInfo:
    """The management veth pair between the host and the peer's namespace; returns `peer` with its addresses.
    Removing the namespace removes the pair (a veth dies with either end)."""
    host_if, peer_if = MGMT_HOST_PREFIX + _digest(sdir), MGMT_PEER_PREFIX + _digest(sdir)
    host_addr, peer_addr = mgmt_addresses(sdir)
    _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
    try:
        _ip("link", "set", "dev", peer_if, "netns", peer.namespace)
        _ip("address", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", "dev", host_if, "up")
        _ip("address", "add", f"{peer_addr}/30", "dev", peer_if, namespace=peer.namespace)
        _ip("link", "set", "dev", peer_if, "up", namespace=peer.namespace)
    except BaseException:
        _delete_link(host_if)
        raise
    return dataclasses.replace(peer, mgmt_interface=host_if, mgmt_address=peer_addr, mgmt_host_address=host_addr)


def attach(peer: PeerInfo, provide_device: DeviceProvider) -> PeerInfo:
    """Get the device from `provide_device`, move it into the peer's namespace (made if missing), set the
    address and bring it and lo up; returns `peer` with the device's MAC.

    Also after a device-model restart: vhea's TAP device went with the old process, while the namespace and
    what runs in it stay. A device of that name still in the namespace is deleted first; one made but not
    moved is deleted on failure (it would stay in the host's namespace otherwise).
    """
    ns, ifname = peer.namespace, peer.interface
    if not exists(ns):
        _ip("netns", "add", ns)
    subprocess.run(["ip", "-n", ns, "link", "del", "dev", ifname], capture_output=True, timeout=15,
                   stdin=subprocess.DEVNULL)
    try:
        provide_device(ifname)
        _ip("link", "set", "dev", ifname, "netns", ns)
        _ip("address", "add", f"{peer.address}/{peer.prefix_len}", "dev", ifname, namespace=ns)
        _ip("link", "set", "dev", "lo", "up", namespace=ns)
        _ip("link", "set", "dev", ifname, "up", namespace=ns)
        mac = read_mac(ns, ifname)
    except BaseException:
        _delete_link(ifname)
        raise
    return dataclasses.replace(peer, mac=mac)


def read_mac(namespace: str, ifname: str) -> str:
    out = _ip("-o", "link", "show", "dev", ifname, namespace=namespace)
    words = out.split()
    return words[words.index("link/ether") + 1] if "link/ether" in words else ""


def _delete_link(ifname: str) -> None:
    subprocess.run(["ip", "link", "del", "dev", ifname], capture_output=True, timeout=15, stdin=subprocess.DEVNULL)


def remove(namespace: str) -> bool:
    """Delete the namespace, first killing what still runs in it (an isoperf server of an interrupted case, a
    `testbed peer` shell), which would otherwise keep it alive unnamed; the TAP device goes with it. True if it
    existed."""
    if not exists(namespace):
        return False
    for pid in _ip("netns", "pids", namespace).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
    _ip("netns", "del", namespace)
    _delete_link(MGMT_HOST_PREFIX + namespace.removeprefix(NAMESPACE_PREFIX))  # gone with the namespace; a guard
    return True


def exec_argv(namespace: str, argv: list[str]) -> list[str]:
    """A command line that runs `argv` natively in the peer namespace."""
    return ["ip", "netns", "exec", namespace, *argv]

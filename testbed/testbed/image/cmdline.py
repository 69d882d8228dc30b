"""The kernel command line a guest boots with: the contract between the testbed and the guest's init.

The guest init (vm-images/) reads its hostname and interface addresses from ``isostack.*`` parameters, so
every value is checked here before it can reach a kernel command line or the guest's /etc/hosts.
"""

from __future__ import annotations

import ipaddress
import re

from testbed.image.artifacts import GuestImage

_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def validate_hostname(name: str) -> str:
    """A single DNS label: it goes on the kernel command line and into /etc/hosts."""
    if not _HOSTNAME_RE.match(name):
        raise ValueError(f"invalid guest hostname {name!r}: use 1-63 letters, digits or '-', not at the ends")
    return name


def validate_mac(mac: str) -> str:
    """Return the MAC in lower case (the guest compares it with /sys/class/net/*/address)."""
    if not _MAC_RE.match(mac):
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex pairs like 52:54:00:ff:00:01")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"invalid MAC address {mac!r}: multicast bit set in the first octet")
    return mac.lower()


def validate_cidr(cidr: str) -> str:
    """An IPv4 host address with its prefix length, e.g. 10.10.0.1/24 (not a network address)."""
    if "/" not in cidr:
        raise ValueError(f"invalid interface address {cidr!r}: expected <ip>/<prefix>, e.g. 10.10.0.1/24")
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError as exc:
        raise ValueError(f"invalid interface address {cidr!r}: {exc}") from exc
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"invalid interface address {cidr!r}: that is the network or broadcast address")
    return str(iface)


def validate_route(network: str, gateway: str) -> str:
    """`isostack.route=` value: an IPv4 network and a gateway address ("10.254.0.0/16,10.0.2.2")."""
    try:
        net = ipaddress.IPv4Network(network)
        via = ipaddress.IPv4Address(gateway)
    except ValueError as exc:
        raise ValueError(f"invalid route {network} via {gateway}: {exc}") from exc
    return f"{net},{via}"


def kernel_cmdline(
    image: GuestImage, hostname: str, ifaddrs: list[tuple[str, str]], extra: list[str] | None = None,
    routes: list[tuple[str, str]] | None = None,
) -> str:
    """The full command line for direct kernel boot of ``image``.

    ifaddrs are (mac, ip/prefix) pairs; routes are (network/prefix, gateway) pairs the guest adds after
    the addresses; ``extra`` are further kernel parameters such as
    ``isolcpus=1 nohz_full=1`` for a dedicated core (they may not set isostack.* or root=).
    """
    del image  # every image built by this recipe takes the same command line
    parts = [
        "console=ttyS0",
        "quiet",
        "loglevel=1",
        "root=/dev/vda",
        "rootfstype=ext4",
        "rw",
        "panic=-1",
        "tsc=reliable",
        "no_timer_check",
        "random.trust_cpu=on",
        f"isostack.hostname={validate_hostname(hostname)}",
    ]
    seen: set[str] = set()
    for mac, cidr in ifaddrs:
        mac = validate_mac(mac)
        if mac in seen:
            raise ValueError(f"MAC address {mac} given twice")
        seen.add(mac)
        parts.append(f"isostack.ifaddr={mac},{validate_cidr(cidr)}")
    parts.extend(f"isostack.route={validate_route(net, via)}" for net, via in routes or [])
    for param in extra or []:
        if not param or any(c.isspace() for c in param) or '"' in param:
            raise ValueError(f"invalid extra kernel parameter {param!r}: one word, no spaces or quotes")
        if param.startswith(("isostack.", "root=", "rootfstype=", "console=")):
            raise ValueError(f"extra kernel parameter {param!r} would override the image's own settings")
        parts.append(param)
    return " ".join(parts)

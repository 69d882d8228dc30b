"""Where isoperf's control connection goes: the testbed's management path, never the link under test.

On the data link the control messages (start, marks, the result) share the data's loss and RTO back-off: cases
ended with "timed out waiting for the peer on the control connection". The management path (testbed.peer's
management link, the guests' user-mode NICs with the control port forwarded: docs/testbed.md):

* guest -> native peer: the peer's end of the management link (the guest routes MGMT_NET via its gateway; QEMU
  connects from the host's namespace);
* guest -> guest: the server's forwarded control port at the gateway (the host's 127.0.0.1);
* native peer -> guest: the server's forwarded control port on the host's end of the management link.

Each of these paths ends on the client's own host, so a client and server on two hosts (a merged topology:
`hosts` names the other host of each guest not on this one; the native peer is always on this one) take the
data path, and the record says so.

Where none exists (a topology from before, a playbook `port` other than the forwarded one) the control
connection takes the data path as before, and the record says why. Pure: the choice is tested without I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from testbed import state
from testbed.harness.playbook import PEER

GATEWAY = "10.0.2.2"  # a guest's user-mode gateway: the host (testbed.lifecycle.up.MGMT_GATEWAY)
FORWARDED_PORT = 5701  # the guest port the control forward targets (testbed.domain.GUEST_CONTROL_PORT)


@dataclass(frozen=True)
class ControlPath:
    host: str
    port: int
    path: str  # "management" or "data"
    why: str | None = None  # data path: why not the management path

    def to_dict(self) -> dict:
        return asdict(self)


def choose(client: state.GuestInfo, server: state.GuestInfo, peer: state.PeerInfo | None, port: int,
           hosts: dict[str, str] | None = None) -> ControlPath:
    """The control endpoint the client connects to for a server listening on `port` (its data address is
    server.data_ip whatever this says); `hosts`: the other host of each guest that is not on this one."""

    def data(why: str) -> ControlPath:
        return ControlPath(server.data_ip, port, "data", why)

    hosts = hosts or {}
    client_host, server_host = hosts.get(client.name), hosts.get(server.name)
    if client_host != server_host:
        return data(f"{client.name} runs on {client_host or 'this host'} and {server.name} on "
                    f"{server_host or 'this host'}: the management path does not join hosts")
    if server.name == PEER:
        if peer is None or not peer.mgmt_address:
            return data("the native peer has no management link (a topology from before it: `testbed up` again)")
        return ControlPath(peer.mgmt_address, port, "management")
    if not server.control_port:
        return data(f"{server.name}'s control port is not forwarded (a topology from before it: `testbed up` again)")
    if port != FORWARDED_PORT:
        return data(f"the playbook's port {port} is not the forwarded control port {FORWARDED_PORT}")
    if client.name == PEER:
        if peer is None or not peer.mgmt_host_address:
            return data("the native peer has no management link (a topology from before it: `testbed up` again)")
        return ControlPath(peer.mgmt_host_address, server.control_port, "management")
    return ControlPath(GATEWAY, server.control_port, "management")


def server_binds(server: state.GuestInfo, path: ControlPath) -> tuple[str, str]:
    """(control bind, data bind) of the isoperf server: the control port on every address when it is reached
    over the management path (a forward or the management link), the data listener on the data address."""
    return ("0.0.0.0" if path.path == "management" else server.data_ip), server.data_ip

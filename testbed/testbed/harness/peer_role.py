"""The native peer as one side of a case: the node it stands as, its shell and layout, and what a case does not
do on it (and says so in the record).

The peer (testbed.peer) is a network namespace on the host with an address on the guests' data subnet. It runs
isoperf natively from the repository's guest folder with this venv's Python: nothing is uploaded. The guests'
NIC placement and NIC layout do not apply (the host's NICs are not the test's, its TAP port has one queue, and
the placement tool would move the host's IRQs); its TCP counters are read in its namespace, so they are its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from testbed import state
from testbed.harness.guestcmd import GuestLayout, peer_layout
from testbed.harness.playbook import PEER
from testbed.harness.remote import PeerShell

NOT_DONE = ("native peer: no NIC placement and no NIC layout (the host's NICs are not the test's; the placement "
            "tool would move the host's IRQs); TCP counters are its network namespace's own")


def is_peer(node: state.GuestInfo) -> bool:
    return node.name == PEER


def node(peer: state.PeerInfo) -> state.GuestInfo:
    """The peer in the shape of a guest, so a case names it, reaches its data address and reads its vhea port
    like a guest's (no SSH, no console: `vcpus` is the host's CPU count)."""
    return state.GuestInfo(name=PEER, ssh_host="", ssh_port=0, data_ip=peer.address, data_mac=peer.mac,
                           port=peer.port, vcpus=os.cpu_count() or 1, memory_mib=0, mgmt_mac="", console_log="")


def shell(peer: state.PeerInfo) -> PeerShell:
    return PeerShell(PEER, peer.namespace)


def log_dir(topology: state.Topology) -> Path:
    """The peer's logs (isoperf server), in the state dir: the host's /tmp is shared by every testbed."""
    return Path(topology.state_dir) / "peer"


def layout(topology: state.Topology, guest_root: Path) -> GuestLayout:
    return peer_layout(log_dir(topology), guest_root)


def placement_record() -> dict:
    """The record's `placement` entry of the peer: nothing placed, and why."""
    return {"mode": "native", "command": None, "exit_code": None, "output": [], "note": NOT_DONE}


def prepare_record(peer: state.PeerInfo, guest_root: Path) -> dict:
    """The peer's entry in the run's guest metadata, in place of an upload: where its code and Python come from."""
    return {"native": True, "namespace": peer.namespace, "address": peer.address, "code": str(guest_root),
            "python": sys.executable, "uploaded": False}

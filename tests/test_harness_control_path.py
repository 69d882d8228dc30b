"""Where isoperf's control connection goes (testbed.harness.control_path), on topologies built in the test."""

from __future__ import annotations

from testbed import state
from testbed.harness import control_path, peer_role

PEER = state.PeerInfo(namespace="isotb-1", interface="vh-pr-1", address="10.10.0.254", prefix_len=24, port="peer",
                      mac="02:00:00:00:00:01", mgmt_interface="vh-pm-1", mgmt_host_address="10.254.1.1",
                      mgmt_address="10.254.1.2")


def guest(name: str, ip: str, control_port: int = 40000) -> state.GuestInfo:
    return state.GuestInfo(name=name, ssh_host="127.0.0.1", ssh_port=2222, data_ip=ip, data_mac="52:54:00:10:00:01",
                           port=name[-1], vcpus=2, memory_mib=1024, mgmt_mac="52:54:00:ff:00:01",
                           console_log="/dev/null", control_port=control_port)


A, B, P = guest("iso-a", "10.10.0.1", 40001), guest("iso-b", "10.10.0.2", 40002), peer_role.node(PEER)


def test_guest_to_peer_takes_the_peers_end_of_the_management_link():
    path = control_path.choose(A, P, PEER, 5701)
    assert (path.host, path.port, path.path) == ("10.254.1.2", 5701, "management")
    assert control_path.server_binds(P, path) == ("0.0.0.0", "10.10.0.254")


def test_guest_to_guest_takes_the_forwarded_port_at_the_gateway():
    path = control_path.choose(A, B, PEER, 5701)
    assert (path.host, path.port, path.path) == ("10.0.2.2", 40002, "management")
    assert control_path.choose(A, B, None, 5701) == path  # needs no peer


def test_peer_to_guest_takes_the_forward_on_the_hosts_end_of_the_link():
    path = control_path.choose(P, A, PEER, 5701)
    assert (path.host, path.port, path.path) == ("10.254.1.1", 40001, "management")
    assert control_path.server_binds(A, path) == ("0.0.0.0", "10.10.0.1")


def test_without_a_management_path_the_data_path_and_why():
    old_peer = state.PeerInfo(namespace="isotb-1", interface="vh-pr-1", address="10.10.0.254", prefix_len=24,
                              port="peer")
    cases = [
        (control_path.choose(A, P, old_peer, 5701), "no management link"),
        (control_path.choose(A, guest("iso-b", "10.10.0.2", 0), PEER, 5701), "not forwarded"),
        (control_path.choose(A, B, PEER, 5702), "port 5702 is not the forwarded control port 5701"),
        (control_path.choose(P, A, old_peer, 5701), "no management link"),
    ]
    for path, why in cases:
        assert path.path == "data" and why in path.why
        assert path.host in ("10.10.0.254", "10.10.0.2", "10.10.0.1")
    data = cases[1][0]
    assert control_path.server_binds(guest("iso-b", "10.10.0.2", 0), data) == ("10.10.0.2", "10.10.0.2")

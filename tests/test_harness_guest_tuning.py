"""testbed.harness.guest_tuning: the guests' TCP/socket sysctls and the data NIC's offloads, parsed from canned
`sysctl` and `ethtool -k` text, and read through a Shell without ever failing the run."""

from __future__ import annotations

from testbed.harness import guest_tuning
from testbed.harness.remote import CommandResult, RemoteError

SYSCTL = """net.ipv4.tcp_congestion_control = cubic
net.core.default_qdisc = pfifo_fast
net.ipv4.tcp_rmem = 4096\t131072\t6291456
net.ipv4.tcp_wmem = 4096\t16384\t4194304
net.core.rmem_max = 212992
net.core.busy_poll = 0
net.core.busy_read = 50
net.ipv4.tcp_autocorking = 1
net.core.somaxconn = 4096
net.ipv4.ip_local_port_range = 32768\t60999
sysctl: permission denied on key 'net.core.bpf_jit_harden'
"""

ETHTOOL = """Features for eth0:
rx-checksumming: on [fixed]
tx-checksumming: on
\ttx-checksum-ipv4: off [fixed]
\ttx-checksum-ip-generic: on
scatter-gather: on
\ttx-scatter-gather: on
tcp-segmentation-offload: on
\ttx-tcp-segmentation: on
\ttx-tcp-ecn-segmentation: off [requested on]
generic-receive-offload: on
large-receive-offload: off [fixed]
rx-vlan-filter: on [fixed]
hw-tc-offload: off [fixed]
"""


def test_sysctl_text_becomes_a_dict_with_single_spaces():
    got = guest_tuning.parse_sysctl(SYSCTL)
    assert got["net.ipv4.tcp_congestion_control"] == "cubic"
    assert got["net.ipv4.tcp_rmem"] == "4096 131072 6291456"
    assert got["net.core.busy_read"] == "50"
    assert got["net.ipv4.ip_local_port_range"] == "32768 60999"
    assert len(got) == 10  # the error line is no `key = value`
    assert guest_tuning.parse_sysctl("") == {}


def test_ethtool_features_become_a_dict_of_states():
    got = guest_tuning.parse_ethtool_features(ETHTOOL)
    assert got["tcp-segmentation-offload"] == "on"
    assert got["tx-checksum-ipv4"] == "off [fixed]"
    assert got["tx-tcp-ecn-segmentation"] == "off [requested on]"
    assert got["generic-receive-offload"] == "on"
    assert "Features for eth0" not in " ".join(got)
    assert len(got) == 13
    assert guest_tuning.parse_ethtool_features("netlink error: no device matches name (offset 24)\n") == {}


def test_sysctl_command_asks_for_every_key_and_ignores_unknown_ones():
    cmd = guest_tuning.sysctl_command()
    assert cmd.startswith("sysctl -e ")
    for key in ("net.ipv4.tcp_congestion_control", "net.core.busy_poll", "net.core.busy_read",
                "net.ipv4.tcp_autocorking", "net.core.somaxconn", "net.core.rmem_max", "net.ipv4.tcp_wmem"):
        assert key in cmd.split()


class CannedShell:
    name = "iso-a"

    def __init__(self, answers: dict):
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command: str, timeout_s: float = 60.0) -> CommandResult:
        self.commands.append(command)
        answer = self.answers[command.split()[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_read_records_both_parts():
    shell = CannedShell({"sysctl": CommandResult(0, SYSCTL, ""), "ethtool": CommandResult(0, ETHTOOL, "")})
    rec = guest_tuning.read(shell, "eth0")
    assert rec["interface"] == "eth0" and rec["error"] is None
    assert rec["sysctl"]["net.core.somaxconn"] == "4096"
    assert rec["offloads"]["scatter-gather"] == "on"
    assert shell.commands[1] == "ethtool -k eth0"


def test_read_turns_failures_into_an_error_and_keeps_what_it_got():
    shell = CannedShell({"sysctl": CommandResult(255, SYSCTL, ""),  # an unreadable key: the rest still counts
                         "ethtool": CommandResult(127, "", "sh: 1: ethtool: not found")})
    rec = guest_tuning.read(shell, "eth0")
    assert rec["sysctl"]["net.ipv4.tcp_congestion_control"] == "cubic"
    assert rec["offloads"] is None
    assert "offloads" in rec["error"] and "ethtool: not found" in rec["error"]
    shell = CannedShell({"sysctl": RemoteError("iso-a: 'sysctl' failed: timed out"),
                         "ethtool": CommandResult(0, ETHTOOL, "")})
    rec = guest_tuning.read(shell, "eth0")
    assert rec["sysctl"] is None and rec["offloads"]["hw-tc-offload"] == "off [fixed]"
    assert rec["error"].startswith("sysctl: iso-a")

"""The guest settings that move a network figure: TCP and socket sysctls, and the data NIC's offloads.

Why: two runs of the same playbook on guests with another congestion control, other socket buffer limits,
busy polling or TSO off are not comparable, and nothing else in run.json would show it. They are read once
per run per guest (and for the native peer, in its network namespace) and kept in run.json's metadata. The
parse functions are pure (canned text in tests); `read` runs the commands and never fails a run: what cannot
be read is an `error`.
"""

from __future__ import annotations

import shlex

from testbed.harness.remote import RemoteError, Shell

# The sysctls that change TCP's behaviour or the socket and device queues' limits (net.* are per network
# namespace, so the peer's are its namespace's).
SYSCTLS = (
    "net.ipv4.tcp_congestion_control",
    "net.core.default_qdisc",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_mem",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.core.rmem_default",
    "net.core.wmem_default",
    "net.core.optmem_max",
    "net.core.busy_poll",
    "net.core.busy_read",
    "net.ipv4.tcp_autocorking",
    "net.ipv4.tcp_notsent_lowat",
    "net.ipv4.tcp_limit_output_bytes",
    "net.ipv4.tcp_min_tso_segs",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_no_metrics_save",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_sack",
    "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_ecn",
    "net.ipv4.tcp_fastopen",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.core.netdev_budget",
    "net.core.netdev_budget_usecs",
    "net.core.dev_weight",
)


def sysctl_command(keys: tuple[str, ...] = SYSCTLS) -> str:
    """`sysctl -e` prints `key = value` for each key and skips those this kernel does not have."""
    return "sysctl -e " + " ".join(shlex.quote(k) for k in keys)


def offloads_command(interface: str) -> str:
    return f"ethtool -k {shlex.quote(interface)}"


def parse_sysctl(text: str) -> dict[str, str]:
    """`sysctl` output ("net.ipv4.tcp_rmem = 4096\t131072\t6291456") as {key: value}; whitespace inside a
    value (tab-separated triples) becomes one space; lines that are not `key = value` are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key and " " not in key:
            out[key] = " ".join(value.split())
    return out


def parse_ethtool_features(text: str) -> dict[str, str]:
    """`ethtool -k IFACE` output as {feature: state}, the state as ethtool words it ("on", "off [fixed]",
    "off [requested on]"); the "Features for eth0:" header and lines without a state are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, state = line.strip().partition(": ")
        state = state.strip()
        if sep and name and " " not in name and state.split()[:1] in (["on"], ["off"]):
            out[name] = state
    return out


def read(shell: Shell, interface: str) -> dict:
    """The node's sysctls and its data NIC's offloads: {"interface", "sysctl", "offloads", "error"}, each
    part None (and why in "error") where its command failed."""
    record: dict = {"interface": interface, "sysctl": None, "offloads": None, "error": None}
    errors = []
    for part, command, parse in (("sysctl", sysctl_command(), parse_sysctl),
                                 ("offloads", offloads_command(interface), parse_ethtool_features)):
        try:
            r = shell.run(command, timeout_s=30.0)
        except RemoteError as e:
            errors.append(f"{part}: {e}")
            continue
        parsed = parse(r.stdout)
        if r.exit_code != 0 and not parsed:
            errors.append(f"{part}: {command!r} exited {r.exit_code}: {(r.stderr or r.stdout).strip()[:200]}")
            continue
        record[part] = parsed
    record["error"] = "; ".join(errors) or None
    return record

"""Fakes shared by the harness tests: local "guests" (LocalShell on this host, loopback data path) and
scripted ones that answer the runner's commands (stack iso, instances, TCP counters), no VMs."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

from rich.console import Console

from testbed import state
from testbed.harness import remote, tcpstats
from testbed.harness.guestcmd import GUEST_ROOT, GuestLayout
from testbed.harness.runner import Runner

FIXTURES = Path(__file__).parent / "fixtures" / "harness"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_topology() -> state.Topology:
    topo = state.Topology.load(FIXTURES / "topology.json")
    for g in topo.guests:
        g.data_ip = "127.0.0.1"
    return topo


class FakeStats:
    """Canned `vhea stats` snapshots, handed out in order (before, after, before, after, ...)."""

    def __init__(self, snapshots: list[dict]):
        self.snapshots = list(snapshots)
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return self.snapshots.pop(0)


def counters(a_bytes: int, b_bytes: int) -> dict:
    def port(n: int) -> dict:
        return {
            "from_guest_frames": n // 1000,
            "from_guest_bytes": n,
            "to_guest_frames": 0,
            "to_guest_bytes": 0,
            "drops": {},
        }

    return {"a": port(a_bytes), "b": port(b_bytes)}


def local_runner(tmp_path: Path, stats) -> Runner:
    layout = GuestLayout(remote_root=str(tmp_path / "opt"), python=sys.executable, log_dir=str(tmp_path))
    (tmp_path / "opt").mkdir()
    shells = {"iso-a": remote.LocalShell("iso-a"), "iso-b": remote.LocalShell("iso-b")}
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    # A snapshot of the guest code: the real tree may change while the test runs (others work on it), and the
    # runner needs only isoperf's Python modules for these tests.  Without placement.py the runner's legacy
    # placement fails here (logged) instead of moving this host's NIC IRQs.
    root = tmp_path / "src"
    (root / "isostack").mkdir(parents=True)
    shutil.copyfile(GUEST_ROOT / "isostack" / "__init__.py", root / "isostack" / "__init__.py")
    python_only = shutil.ignore_patterns("__pycache__", "*.so", "*.c")
    shutil.copytree(GUEST_ROOT / "isoperf", root / "isoperf", ignore=python_only)
    assert not (root / "isostack" / "placement.py").exists()
    return Runner(local_topology(), shells, layout, stats, console, guest_root=root)


def stream_playbook(port: int, extra: str = "") -> str:
    return f"""
version: 1
name: local
tests:
  - name: stream-local
    test: stream
    size: [256, 1448]
    duration: 0.3
    warmup: 0.1
    verify: true
    port: {port}
{extra}"""


class ScriptedShell:
    """A guest that answers the runner's commands from a script and records them (stack iso, no VMs)."""

    def __init__(self, name: str, result: dict, daemon_dies: bool = False, carried: int | None = None):
        self.name = name
        self.result = result
        self.daemon_dies = daemon_dies
        self.carried = result.get("bytes", 0) if carried is None else carried  # bytes isostackd says it sent
        self.commands: list[str] = []

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        self.commands.append(command)
        if "-m isoperf server" in command:
            return remote.CommandResult(0, "100\n", "")
        if "isostack.dispatcher" in command:
            return remote.CommandResult(0, "200\n", "")
        if command.startswith("test -S"):
            return remote.CommandResult(3 if self.daemon_dies else 0, "", "")
        if "-m isoperf client" in command:
            return remote.CommandResult(0, json.dumps(self.result), "")
        if command.startswith("tail") and "isostackd" in command:
            stats = f"t isostackd INFO stats: {{'send_bytes': {self.carried}, 'recv_bytes': 0, 'apps_attached': 1}}"
            return remote.CommandResult(0, f"isostackd: CPU 1\nisostackd: stopped\n{stats}\n", "")
        return remote.CommandResult(0, "", "")

    def put(self, local: Path, remote_path: str) -> None:
        raise AssertionError("no upload in this test")

    def close(self) -> None:
        pass


ISO_RESULT = {
    "test": "stream", "stack": "iso", "size": 64, "connections": 1, "duration": 1.0, "bytes": 6400,
    "messages": 100, "throughput_bps": 51200.0, "messages_per_s": 100.0, "cpu": {"client": {}, "server": {}},
    "verified": True, "errors": [],
}


def iso_runner(tmp_path: Path, daemon_dies: bool = False) -> tuple[Runner, ScriptedShell]:
    client = ScriptedShell("iso-a", ISO_RESULT, daemon_dies)
    shells = {"iso-a": client, "iso-b": ScriptedShell("iso-b", ISO_RESULT)}
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    return Runner(local_topology(), shells, GuestLayout(), None, console), client


ISO_PB = """
version: 1
name: iso
tests:
  - name: stream-iso
    test: stream
    size: 64
    stack: iso
    duration: 1
    verify: true
"""


class TcpCountingShell(ScriptedShell):
    """Answers the TCP counters command: `sent` more segments and `retrans` retransmitted at each read."""

    def __init__(self, name: str, result: dict, readable: bool = True):
        super().__init__(name, result)
        self.readable = readable
        self.reads = 0

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        if command == tcpstats.COMMAND:
            self.commands.append(command)
            self.reads += 1
            if not self.readable:
                return remote.CommandResult(1, "", "cat: /proc/net/netstat: No such file or directory")
            n = self.reads
            text = (f"Tcp: OutSegs RetransSegs\nTcp: {4000 * n} {40 * n}\n"
                    f"TcpExt: TCPTimeouts TCPSpuriousRTOs TCPFastRetrans\nTcpExt: {n} 0 {30 * n}\n")
            return remote.CommandResult(0, text, "")
        return super().run(command, timeout_s)


SNAPSHOT = """\
irq virtio0-input.0 29 {a} 5,0,0
irq virtio0-output.0 30 {a} 5,0,0
irq virtio0-input.1 31 {b} 0,0,0
irq virtio0-output.1 32 {b} 0,0,0
rps rx-0 0
rps rx-1 0
xps tx-0 1
xps tx-1 2
"""


class InstancesShell(ScriptedShell):
    """A 3-vCPU guest with 2 queue pairs: isostackd instances get PIDs 200 + K and write their stats line;
    the layout snapshot counts interrupts on the vCPU a queue is placed on."""

    def __init__(self, name: str, result: dict, dying_instance: int | None = None):
        super().__init__(name, result)
        self.dying_instance = dying_instance
        self.snapshots = 0

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        if "isostack.dispatcher" in command:
            self.commands.append(command)
            k = int(command.split("--instance ")[1].split()[0]) if "--instance " in command else 0
            return remote.CommandResult(0, f"{200 + k}\n", "")
        if command.startswith("test -S"):
            self.commands.append(command)
            k = int(command.split("isostackd-")[1].split(".")[0]) if "isostackd-" in command else 0
            return remote.CommandResult(3 if k == self.dying_instance else 0, "", "")
        if "isostack.placement --legacy" in command:
            self.commands.append(command)
            return remote.CommandResult(0, "/proc/irq/29/smp_affinity_list = 0\n", "")
        if "/proc/interrupts" in command:
            self.commands.append("snapshot")
            self.snapshots += 1
            text = SNAPSHOT.format(a=1, b=2)
            if self.snapshots % 2 == 0:  # after the client: 100 interrupts more on each queue's vCPU
                text = text.replace("29 1 5,0,0", "29 1 5,100,0").replace("31 2 0,0,0", "31 2 0,0,100")
            return remote.CommandResult(0, text, "")
        if command.startswith("tail") and "isostackd" in command:
            self.commands.append(command)
            k = int(command.split("isostackd-")[1].split(".")[0]) if "isostackd-" in command else 0
            log = (f"t isostackd INFO pinned to CPU {1 + k}\n"
                   f"t isostackd INFO placement: /proc/irq/{29 + 2 * k}/smp_affinity_list = {1 + k}\n"
                   f"t isostackd INFO stats: {{'loops': {1000 + k}, 'sends': {10 + k}, 'send_bytes': 3200,"
                   " 'apps_attached': 1}\n")
            return remote.CommandResult(0, log, "")
        return super().run(command, timeout_s)


def instances_runner(tmp_path: Path, vcpus: int = 3, queues: int = 2, dying_instance: int | None = None):
    topo = local_topology()
    for g in topo.guests:
        g.vcpus = vcpus
    topo.options = {"queues": queues, "vcpus": vcpus}
    client = InstancesShell("iso-a", ISO_RESULT, dying_instance)
    server = InstancesShell("iso-b", ISO_RESULT)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    return Runner(topo, {"iso-a": client, "iso-b": server}, GuestLayout(), None, console), client, server


def command_kinds(commands: list[str]) -> list[str]:
    out = []
    for c in commands:
        if "isostack.dispatcher" in c:
            out.append("start " + (c.split("--instance ")[1].split()[0] if "--instance " in c else "0"))
        elif c.startswith("test -S"):
            out.append("ready")
        elif "isostack.placement --legacy" in c:
            out.append("legacy placement")
        elif c == "snapshot":
            out.append(c)
        elif "-m isoperf client" in c:
            out.append("client")
        elif c.startswith("kill 20"):
            out.append("stop " + c.split()[1])
        elif c.startswith("rm -f /run/isostack/isostackd-"):
            out.append("cleanup")
    return out

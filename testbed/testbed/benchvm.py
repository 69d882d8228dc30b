"""`testbed bench-vm`: TCP between two guests through vhea, against QEMU's virtio-net on tap + Linux bridge.

Both set-ups run on this machine, with the same accelerator (KVM if it really boots, else TCG), in the same
run, one after the other so they do not fight for the cores. With `--repeats N` the pair is measured N times in
alternating order (vhea first, then tap+bridge first, ...), so that a load that comes and goes on a shared
machine hits both alike; the table shows the medians and every run's figure:

- vhea: two plain QEMU guests (no libvirt) with a vhost-user virtio-net on ports a and b of a `vhea serve`
  started here; guest memory is a shared memfd, as vhost-user needs.
- tap+bridge: two QEMU guests with `-netdev tap` on tapA / tapB, joined by a Linux bridge; taps and bridge
  live in a network namespace `vhbench-<pid>` created here and removed afterwards, and the QEMUs run
  inside it (`ip netns exec`).

Each guest also has a management NIC (QEMU user networking, SSH forwarded to a 127.0.0.1 port). For the
QEMUs in the namespace that port is bound to 127.0.0.1 *of the namespace*, so the bench runs the OpenSSH
client through `ip netns exec NS ssh ...` (with the image key); it uses the same ssh client, without
`ip netns exec`, for the vhea guests, so both set-ups are driven alike.

In each set-up: iperf3 server in guest B, `iperf3 -c -J` from guest A for `duration` seconds; the rate is
the receiver's bits_per_second. A short ping gives the round-trip time. Everything started here (QEMUs by
their PIDs, vhea serve, the namespace, the overlays) is removed on success, error, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import testbed.accel
import testbed.image.cache
import testbed.image.cmdline
import testbed.image.overlay
from testbed.state import cache_root
from vhea.bench_serve import proc_cpu_s, vhea_server

NETNS_PREFIX = "vhbench-"
GUEST_MEM = "1G"
BOOT_TIMEOUT_S = 180.0
SSH_TIMEOUT_S = 90.0
SERVER_IP = "10.10.0.2"
GUESTS = (  # name, management MAC, data MAC, data address
    ("vhb-a", "52:54:00:ff:00:01", "52:54:00:10:00:01", "10.10.0.1/24"),
    ("vhb-b", "52:54:00:ff:00:02", "52:54:00:10:00:02", "10.10.0.2/24"),
)
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5"]


class VmBenchError(RuntimeError):
    pass


@dataclass
class Guest:
    name: str
    mgmt_mac: str
    data_mac: str
    data_cidr: str
    ssh_port: int
    overlay: Path
    console: Path


@dataclass
class VmRow:
    setup: str  # "vhea (vhost-user)" | "tap+bridge"
    mbps: float
    ratio: float | None = None  # to tap+bridge
    vhea_cpu: float | None = None  # cores the vhea process used during the iperf3 run
    rtt_ms: float | None = None  # ping average
    retransmits: int | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)  # Mbit/s of each repeat, in the order measured


@dataclass
class VmResult:
    duration: float
    accel: str
    accel_reason: str
    vhost_net: bool
    rows: list[VmRow] = field(default_factory=list)
    repeat: int = 1


# ---- pure helpers (unit-tested) --------------------------------------------------------------------------------

def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def vhost_user_nic(sock: str | Path, mac: str) -> list[str]:
    """Data NIC on a vhea port: QEMU is the vhost-user client of the socket vhea listens on."""
    return ["-chardev", f"socket,id=c0,path={sock}", "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,rx_queue_size=1024,tx_queue_size=1024"]


def tap_nic(ifname: str, mac: str, vhost: bool) -> list[str]:
    """Data NIC on an existing tap device (QEMU's own virtio-net back-end, or vhost-net if `vhost`)."""
    # tx_queue_size above 256 is only for vhost-user / vDPA back-ends; QEMU refuses it for tap.
    return ["-netdev", f"tap,id=n0,ifname={ifname},script=no,downscript=no,vhost={'on' if vhost else 'off'}",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,rx_queue_size=1024"]


def qemu_cmd(qemu: str, accel: str, kernel: Path, initrd: Path, cmdline: str, guest: Guest, data_nic: list[str],
             tag: str) -> list[str]:
    return [
        qemu, "-name", f"{tag}-{guest.name}", *accel_args(accel), "-smp", "1", "-m", GUEST_MEM,
        "-object", f"memory-backend-memfd,id=mem,size={GUEST_MEM},share=on", "-numa", "node,memdev=mem",
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-drive", f"file={guest.overlay},if=virtio,format=qcow2",
        *data_nic,
        "-netdev", f"user,id=m,hostfwd=tcp:127.0.0.1:{guest.ssh_port}-:22",
        "-device", f"virtio-net-pci,netdev=m,mac={guest.mgmt_mac},romfile=",
        "-serial", f"file:{guest.console}",
    ]  # fmt: skip


def netns_exec(ns: str | None, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)


def ssh_cmd(key: Path, port: int, command: str, netns: str | None = None) -> list[str]:
    return netns_exec(netns, ["ssh", "-i", str(key), "-p", str(port), *SSH_OPTS, "root@127.0.0.1", command])


def netns_setup_cmds(ns: str) -> list[list[str]]:
    """Commands that create the namespace with tapA, tapB on bridge br0, all up (lo too: hostfwd binds it)."""
    x = ["ip", "netns", "exec", ns]
    return [
        ["ip", "netns", "add", ns],
        [*x, "ip", "link", "set", "lo", "up"],
        [*x, "ip", "link", "add", "br0", "type", "bridge"],
        [*x, "ip", "tuntap", "add", "tapA", "mode", "tap", "vnet_hdr"],
        [*x, "ip", "tuntap", "add", "tapB", "mode", "tap", "vnet_hdr"],
        [*x, "ip", "link", "set", "tapA", "master", "br0"],
        [*x, "ip", "link", "set", "tapB", "master", "br0"],
        [*x, "ip", "link", "set", "tapA", "up"],
        [*x, "ip", "link", "set", "tapB", "up"],
        [*x, "ip", "link", "set", "br0", "up"],
    ]


def parse_iperf3(text: str) -> tuple[float, int | None]:
    """(receiver bits/s, sender retransmits) from `iperf3 -c -J` output."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise VmBenchError(f"iperf3 printed no JSON: {text[:300]!r}") from e
    if data.get("error"):
        raise VmBenchError(f"iperf3: {data['error']}")
    try:
        end = data["end"]
        bps = float(end["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError) as e:
        raise VmBenchError("iperf3 JSON has no end.sum_received.bits_per_second") from e
    retr = end.get("sum_sent", {}).get("retransmits")
    return bps, int(retr) if retr is not None else None


_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = [\d.]+/([\d.]+)/")


def parse_ping(text: str) -> float | None:
    """Average RTT in ms from ping's summary line, None if there is none."""
    m = _RTT.search(text)
    return float(m.group(1)) if m else None


def setup_order(repeat_index: int) -> tuple[str, str]:
    """Which set-up goes first in repeat `repeat_index`: alternate, so a drifting load hits both alike."""
    return ("vhea", "tap") if repeat_index % 2 == 0 else ("tap", "vhea")


def _median(values: list[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def combine(setup: str, runs: list[VmRow], note: str = "") -> VmRow:
    """One row for a set-up measured several times: the medians, and each run's Mbit/s kept in `runs`."""
    def med(values):
        values = [x for x in values if x is not None]
        return _median(values) if values else None

    retr = med([r.retransmits for r in runs])
    return VmRow(setup, med([r.mbps for r in runs]), None, med([r.vhea_cpu for r in runs]),
                 med([r.rtt_ms for r in runs]), None if retr is None else int(retr), note,
                 [r.mbps for r in runs])


def ratios(rows: list[VmRow]) -> None:
    base = next((r.mbps for r in rows if r.setup == "tap+bridge"), None)
    for r in rows:
        r.ratio = r.mbps / base if base else None


# ---- processes and namespace ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(cmd: list[str], timeout: float = 30.0) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise VmBenchError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res.stdout


def netns_exists(ns: str) -> bool:
    return ns in _check(["ip", "netns", "list"]).split()


@contextlib.contextmanager
def bridge_netns(ns: str):
    """The namespace with tapA/tapB on br0; removed on the way out, whatever happened."""
    try:
        for cmd in netns_setup_cmds(ns):
            _check(cmd)
        yield ns
    finally:
        if netns_exists(ns):
            # taps and bridge go with the namespace once no process (our QEMUs, stopped before) holds it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def vhost_net_usable() -> tuple[bool, str]:
    """vhost-net needs /dev/vhost-net openable (the module may be missing in containers)."""
    try:
        fd = os.open("/dev/vhost-net", os.O_RDWR)
    except OSError as e:
        return False, f"/dev/vhost-net: {e.strerror}"
    os.close(fd)
    return True, "/dev/vhost-net opened"


class Guests:
    """QEMU processes started here, stopped by their own PIDs."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as f:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # Ctrl-C reaches only us; we stop them
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # `ip netns exec` execs QEMU, so this PID is QEMU itself
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        self.procs.clear()


def wait_ready(guests: list[Guest], procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(zip(guests, procs, logs, strict=True))
    while pending:
        for item in list(pending):
            g, p, log = item
            text = g.console.read_text(errors="replace") if g.console.exists() else ""
            if f"ISOSTACK-READY {g.name}" in text:
                pending.remove(item)
            elif p.poll() is not None:
                raise VmBenchError(f"QEMU of {g.name} exited {p.returncode}: {log.read_text()[-800:]}")
        if pending and time.monotonic() > deadline:
            raise VmBenchError(f"{pending[0][0].name}: no ISOSTACK-READY within {timeout:.0f} s")
        time.sleep(0.2)


def ssh(key: Path, g: Guest, command: str, netns: str | None, timeout: float = 60.0) -> str:
    res = subprocess.run(ssh_cmd(key, g.ssh_port, command, netns), capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise VmBenchError(f"{g.name}: `{command}` exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res.stdout


def wait_ssh(key: Path, g: Guest, netns: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ssh(key, g, "true", netns, timeout=20)
            return
        except (VmBenchError, subprocess.TimeoutExpired) as e:
            if time.monotonic() > deadline:
                raise VmBenchError(f"no SSH to {g.name} within {timeout:.0f} s ({e})") from e
            time.sleep(1.0)


# ---- one set-up -------------------------------------------------------------------------------------------------

def measure_pair(image, accel: str, workdir: Path, tag: str, data_nics: list[list[str]], duration: float,
                 netns: str | None, ping: bool, cpu_pid: int | None, say) -> tuple[float, int | None,
                                                                                      float | None, float | None]:
    """Boot the two guests, run iperf3 A -> B; (bits/s, retransmits, rtt ms, vhea cores)."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VmBenchError("qemu-system-x86_64 not found")
    guests, procs, logs = [], [], []
    qemus = Guests()
    try:
        for (name, mgmt, data, cidr), nic in zip(GUESTS, data_nics, strict=True):
            g = Guest(name, mgmt, data, cidr, _free_port(), workdir / f"{tag}-{name}.qcow2",
                      workdir / f"{tag}-{name}.console")
            testbed.image.overlay.create_overlay(image, g.overlay)
            cmdline = testbed.image.cmdline.kernel_cmdline(image, name, [(mgmt, "10.0.2.15/24"), (data, cidr)])
            log = workdir / f"{tag}-{name}.qemu.log"
            cmd = netns_exec(netns, qemu_cmd(qemu, accel, image.kernel, image.initrd, cmdline, g, nic,
                                             f"{NETNS_PREFIX}{os.getpid()}"))
            guests.append(g)
            logs.append(log)
            procs.append(qemus.start(cmd, log))
        t0 = time.monotonic()
        wait_ready(guests, procs, logs, BOOT_TIMEOUT_S)
        for g in guests:
            wait_ssh(image.ssh_key, g, netns, SSH_TIMEOUT_S)
        say(f"{tag}: guests up in {time.monotonic() - t0:.0f} s")
        a, b = guests
        ssh(image.ssh_key, b, "iperf3 -s -D", netns)
        # the data path has to work first (ARP, bridge learning); the ping doubles as the RTT figure
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(ssh_cmd(image.ssh_key, a.ssh_port, f"ping -c 1 -W 1 {SERVER_IP}", netns),
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise VmBenchError(f"{a.name} cannot ping {SERVER_IP} over the data NIC")
        rtt = parse_ping(ssh(image.ssh_key, a, f"ping -q -c 5 -i 0.2 {SERVER_IP}", netns)) if ping else None
        say(f"{tag}: iperf3 for {duration:g} s")
        c0, w0 = (proc_cpu_s(cpu_pid) if cpu_pid else 0.0), time.monotonic()
        out = ssh(image.ssh_key, a, f"iperf3 -c {SERVER_IP} -t {duration:g} -J", netns,
                  timeout=duration + 60)
        cpu = (proc_cpu_s(cpu_pid) - c0) / (time.monotonic() - w0) if cpu_pid else None
        bps, retr = parse_iperf3(out)
        return bps, retr, rtt, cpu
    finally:
        qemus.stop()


# ---- the whole run ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so the finally blocks remove what we started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(duration: float = 10.0, accel: str = "auto", ping: bool = True, progress=None, repeat: int = 1) -> VmResult:
    say = progress or (lambda _m: None)
    if os.geteuid() != 0:
        raise VmBenchError("testbed bench-vm needs root (network namespace, tap devices)")
    from rich.console import Console

    image = testbed.image.cache.ensure_image(console=Console(stderr=True, quiet=progress is None))
    accel, reason = testbed.accel.choose_accel(accel, image.kernel, cache_root())
    vhost, vhost_reason = vhost_net_usable()
    say(f"accel {accel} ({reason}); vhost-net {'on' if vhost else 'off'} ({vhost_reason})")
    result = VmResult(duration, accel, reason, vhost, repeat=repeat)
    workdir = Path(tempfile.mkdtemp(prefix=f"{NETNS_PREFIX}{os.getpid()}-"))
    sockdir = tempfile.mkdtemp(prefix="vhbvm", dir="/tmp")  # short: unix socket paths are limited
    ns = f"{NETNS_PREFIX}{os.getpid()}"
    ok = False
    try:
        with _sigterm_as_interrupt():
            measured: dict[str, list[VmRow]] = {"vhea": [], "tap": []}
            for k in range(repeat):
                for setup in setup_order(k):
                    tag = setup if repeat == 1 else f"{setup}{k + 1}"
                    if repeat > 1:
                        say(f"run {k + 1} of {repeat}: {setup}")
                    measured[setup].append(_measure_vhea(image, accel, workdir, tag, duration, ping, sockdir, say)
                                           if setup == "vhea" else
                                           _measure_tap(image, accel, workdir, tag, duration, ping, ns, vhost, say))
            result.rows.append(combine("vhea (vhost-user)", measured["vhea"]))
            result.rows.append(combine("tap+bridge", measured["tap"],
                                       f"QEMU virtio-net, vhost-net {'on' if vhost else 'off'}"))
        ratios(result.rows)
        ok = True
        return result
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"testbed bench-vm: logs kept in {workdir}", file=sys.stderr)
            for f in workdir.glob("*.qcow2"):
                f.unlink(missing_ok=True)


def _measure_vhea(image, accel: str, workdir: Path, tag: str, duration: float, ping: bool, sockdir: str,
                  say) -> VmRow:
    say(f"{tag}: starting vhea serve and two guests on ports a, b")
    with vhea_server(sockdir, str(workdir / f"{tag}-vhea.log")) as vhea:
        nics = [vhost_user_nic(f"{sockdir}/{p}.sock", g[2]) for p, g in zip("ab", GUESTS, strict=True)]
        bps, retr, rtt, cpu = measure_pair(image, accel, workdir, tag, nics, duration, None, ping, vhea.pid, say)
    return VmRow("vhea (vhost-user)", bps / 1e6, None, cpu, rtt, retr)


def _measure_tap(image, accel: str, workdir: Path, tag: str, duration: float, ping: bool, ns: str, vhost: bool,
                 say) -> VmRow:
    say(f"{tag}: namespace {ns}, two guests on tapA, tapB")
    with bridge_netns(ns):
        nics = [tap_nic(t, g[2], vhost) for t, g in zip(("tapA", "tapB"), GUESTS, strict=True)]
        bps, retr, rtt, _ = measure_pair(image, accel, workdir, tag, nics, duration, ns, ping, None, say)
    return VmRow("tap+bridge", bps / 1e6, None, None, rtt, retr)


def print_table(res: VmResult) -> None:
    from rich.console import Console
    from rich.table import Table

    runs = f", medians of {res.repeat} alternating runs" if res.repeat > 1 else ""
    t = Table(title=f"testbed bench-vm: TCP guest A -> guest B, iperf3 {res.duration:g} s, accel {res.accel}, "
                    f"vhost-net {'on' if res.vhost_net else 'off'}{runs}")
    for col, just in (("set-up", "left"), ("Mbit/s", "right"), ("vs tap+bridge", "right"),
                      ("vhea CPU", "right"), ("ping RTT", "right"), ("retransmits", "right"), ("note", "left")):
        t.add_column(col, justify=just)
    if res.repeat > 1:
        t.add_column("each run, Mbit/s", justify="left")
    for r in res.rows:
        each = [" / ".join(f"{x:,.0f}" for x in r.runs)] if res.repeat > 1 else []
        t.add_row(r.setup, f"{r.mbps:,.0f}", "-" if r.ratio is None else f"{r.ratio:.0%}",
                  "-" if r.vhea_cpu is None else f"{r.vhea_cpu:.0%}",
                  "-" if r.rtt_ms is None else f"{r.rtt_ms:.2f} ms",
                  "-" if r.retransmits is None else str(r.retransmits), r.note, *each)
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    console.print(t)


def to_json(res: VmResult) -> str:
    return json.dumps(asdict(res))


def cli_main(args) -> int:
    """Entry point from `testbed bench-vm` (args: duration, accel, json, repeats)."""
    if not 1 <= args.duration <= 120:
        print("testbed bench-vm: error: --duration must be in 1..120", file=sys.stderr)
        return 2
    repeat = args.repeats
    if not 1 <= repeat <= 10:
        print("testbed bench-vm: error: --repeats must be in 1..10", file=sys.stderr)
        return 2
    progress = None if args.json else (lambda m: print(f"testbed bench-vm: {m}", file=sys.stderr, flush=True))
    try:
        res = run(args.duration, args.accel, progress=progress, repeat=repeat)
    except VmBenchError as e:
        print(f"testbed bench-vm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, after everything started here was removed
        print("testbed bench-vm: interrupted; guests, vhea serve and the namespace removed", file=sys.stderr)
        return 130
    if args.json:
        print(to_json(res))
    else:
        print_table(res)
    return 0

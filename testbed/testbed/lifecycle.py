"""Bringing the testbed up and down: device model, guest disks, domains, readiness.

`up` is all-or-nothing: if any step fails, whatever it started is stopped again, so a
failed `testbed up` leaves nothing running.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from testbed import devicemodel, procs, supervisor, virt
from testbed.accel import choose_accel
from testbed.domain import GuestSpec, render_domain
from testbed.image import cache as image_cache
from testbed.image.cmdline import kernel_cmdline
from testbed.image.overlay import create_overlay
from testbed.image.recipe import recipe_hash
from testbed.ssh import connect, run, wait_for_ssh
from testbed.state import DeviceModelInfo, GuestInfo, Topology, cache_root, topology_path

READY_MARKER = "ISOSTACK-READY"
DATA_SUBNET = "10.10.0"
# `testbed up` writes the PID of vhea serve here as soon as it exists (the supervisor's goes to
# supervisor.PID_FILE), so that `testbed down` finds both even if `up` dies before topology.json.
VHEA_PID_FILE = "vhea.pid"


@dataclass
class UpOptions:
    state_dir: Path
    uri: str | None = None
    guests: int = 2
    vcpus: int = 2
    memory_mib: int = 1024
    queues: int = 1
    accel: str = "auto"
    isolate_cpus: str = ""  # guest vCPUs kept free of the scheduler, timer ticks and IRQs (e.g. "1")
    boot_timeout_s: float = 180.0
    #: vhea's 802.3x flow control on every port: a receiving guest late with rx buffers pauses the sender
    #: instead of losing TSO frames (the testbed measures the sender's stack); pause limit None: vhea's default
    flow_control: bool = True
    pause_max_us: int | None = None

    def fingerprint(self) -> dict:
        """What decides whether a running testbed can be reused for these options."""
        return {"uri": self.uri, "guests": self.guests, "vcpus": self.vcpus, "memory_mib": self.memory_mib,
                "queues": self.queues, "accel": self.accel, "isolate_cpus": self.isolate_cpus,
                "flow_control": self.flow_control, "pause_max_us": self.pause_max_us,
                "image": recipe_hash()}

    def isolated(self) -> list[int]:
        """The vCPUs of --isolate-cpus ("1", "1,3", "1-3"), checked against --vcpus."""
        return parse_cpu_list(self.isolate_cpus, self.vcpus) if self.isolate_cpus else []

    def guest_kernel_args(self) -> list[str]:
        """Kernel parameters that dedicate the isolated vCPUs, as the seed dedicates a core to the stack.

        isolcpus keeps the scheduler's load balancing off them (isostackd pins itself there), nohz_full stops the
        timer tick while one task runs, rcu_nocbs moves RCU callbacks away, and irqaffinity sends every IRQ that
        nobody placed to the other vCPUs (isostackd then moves its own NIC queues' IRQs onto its core).
        """
        cpus = self.isolated()
        if not cpus:
            return []
        iso = ",".join(map(str, cpus))
        housekeeping = ",".join(str(c) for c in range(self.vcpus) if c not in cpus)
        return [f"isolcpus={iso}", f"nohz_full={iso}", f"rcu_nocbs={iso}", f"irqaffinity={housekeeping}"]

    def validate(self) -> None:
        if not 2 <= self.guests <= 8:
            raise ValueError(f"--guests must be 2..8, not {self.guests}")
        if not 1 <= self.vcpus <= 64:
            raise ValueError(f"--vcpus must be 1..64, not {self.vcpus}")
        if not 256 <= self.memory_mib <= 65536:
            raise ValueError(f"--memory must be 256..65536 MiB, not {self.memory_mib}")
        if not 1 <= self.queues <= 16:
            raise ValueError(f"--queues must be 1..16, not {self.queues}")
        if self.pause_max_us is not None and not 1 <= self.pause_max_us <= 1_000_000:
            raise ValueError(f"--pause-max-us must be 1..1000000, not {self.pause_max_us}")
        if self.pause_max_us is not None and not self.flow_control:
            raise ValueError("--pause-max-us goes with flow control (not with --no-flow-control)")
        self.isolated()


def parse_cpu_list(text: str, vcpus: int) -> list[int]:
    """Parse a kernel-style CPU list ("1", "1,3", "1-3") of guest vCPUs; vCPU 0 stays for housekeeping."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ValueError(f"--isolate-cpus: {text!r} is not a CPU list such as 1 or 1,3 or 1-3") from None
        if first > last:
            raise ValueError(f"--isolate-cpus: range {part.strip()!r} runs backwards")
        cpus.update(range(first, last + 1))
    bad = sorted(c for c in cpus if not 0 <= c < vcpus)
    if bad:
        raise ValueError(f"--isolate-cpus: vCPU {bad[0]} does not exist (the guests have --vcpus {vcpus})")
    if 0 in cpus:
        raise ValueError("--isolate-cpus: vCPU 0 must stay for the kernel's housekeeping and the applications")
    return sorted(cpus)


def guest_names(n: int) -> list[tuple[str, str]]:
    """(guest name, device-model port name) pairs: iso-a on port a, iso-b on port b, ..."""
    letters = "abcdefgh"
    return [(f"iso-{letters[i]}", letters[i]) for i in range(n)]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_console(log: Path, marker: str, timeout_s: float, alive) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if log.exists() and marker in log.read_text(errors="replace"):
            return time.monotonic() - t0
        if not alive():
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
            raise RuntimeError(f"guest stopped while booting; console: {' | '.join(tail) or 'empty'}")
        time.sleep(0.25)
    raise TimeoutError(f"no {marker!r} on {log} within {timeout_s:.0f} s")


def healthy(sdir: Path) -> Topology | None:
    """The running testbed of `sdir` if every guest runs and the device model answers, else None."""
    try:
        topo, states, counters = status(sdir)
    except (OSError, ValueError):
        return None
    ok = counters is not None and all(states.get(g.name) == "running" for g in topo.guests)
    return topo if ok else None


def up(opts: UpOptions, console: Console, recreate: bool = False) -> Topology:
    """Bring the testbed up; a healthy one started with the same options is reused unless `recreate`."""
    opts.validate()
    sdir = opts.state_dir
    tpath = topology_path(sdir)
    if tpath.exists():
        running = None if recreate else healthy(sdir)
        if running is not None and running.options == opts.fingerprint():
            console.print(f"testbed already up in {sdir} with these options (--recreate starts it afresh)")
            publish_classifier_settings(running, console)
            return running
        console.print(f"[yellow]taking down the testbed that was up in {sdir} first[/]")
        down(sdir, console)
    elif left := find_leftovers(sdir):
        console.print(f"[yellow]stopping what an interrupted `testbed up` left in {sdir} first: {left.describe()}[/]")
        down(sdir, console)
    sdir.mkdir(parents=True, exist_ok=True)
    uri = opts.uri or virt.embed_uri(sdir / "libvirt")
    if not uri.startswith("qemu:///embed"):
        # Fail before building anything when a daemon's URI is unreachable. (An embed root is opened
        # only by the supervisor: a second opener would disturb its guests.)
        virt.connect(uri).close()

    img = image_cache.ensure_image(cache_root(), console=console)
    accel, reason = choose_accel(opts.accel, img.kernel, cache_root())
    if accel == "tcg" and opts.accel == "auto":
        console.print(f"[yellow]warning: KVM unusable, using TCG (software emulation): {reason}[/]")

    names = guest_names(opts.guests)
    sock_dir = sdir / "vhea"
    dm_log = sdir / "vhea.log"
    dm_pid = sup_pid = 0
    try:
        with console.status("starting the device model (vhea serve)"):
            dm_pid = devicemodel.start(sock_dir, [p for _, p in names], opts.queues, dm_log,
                                       pid_file=sdir / VHEA_PID_FILE, flow_control=opts.flow_control,
                                       pause_max_us=opts.pause_max_us)
        ncpu = os.cpu_count() or 1
        guests: list[GuestInfo] = []
        domains: list[dict] = []
        for i, (name, port) in enumerate(names):
            gdir = sdir / "guests" / name
            gdir.mkdir(parents=True, exist_ok=True)
            disk = create_overlay(img, gdir / "disk.qcow2")
            console_log = gdir / "console.log"
            console_log.unlink(missing_ok=True)
            data_mac = f"52:54:00:10:00:{i + 1:02x}"
            mgmt_mac = f"52:54:00:ff:00:{i + 1:02x}"
            data_ip = f"{DATA_SUBNET}.{i + 1}"
            ssh_port = free_tcp_port()
            spec = GuestSpec(
                name=name, accel=accel, vcpus=opts.vcpus, memory_mib=opts.memory_mib,
                vcpu_pins=[v % ncpu for v in range(opts.vcpus)],
                kernel=img.kernel, initrd=img.initrd,
                cmdline=kernel_cmdline(img, name, [(mgmt_mac, "10.0.2.15/24"), (data_mac, f"{data_ip}/24")],
                                       extra=opts.guest_kernel_args()),
                disk=disk, data_mac=data_mac, vhost_socket=sock_dir / f"{port}.sock",
                queues=opts.queues, console_log=console_log, ssh_port=ssh_port, mgmt_mac=mgmt_mac,
            )
            (gdir / "domain.xml").write_text(xml := render_domain(spec))
            domains.append({"name": name, "xml": xml})
            guests.append(GuestInfo(
                name=name, ssh_host="127.0.0.1", ssh_port=ssh_port, data_ip=data_ip, data_mac=data_mac,
                port=port, vcpus=opts.vcpus, memory_mib=opts.memory_mib, mgmt_mac=mgmt_mac,
                console_log=str(console_log)))

        (sdir / supervisor.DOMAINS_FILE).write_text(json.dumps(domains))
        with console.status(f"starting {len(domains)} guests through libvirt ({uri})"):
            sup_pid = supervisor.spawn(sdir, uri)

        def running(name: str) -> bool:
            return supervisor.request(sdir, "status")["domains"].get(name) == "running"

        def ready(g: GuestInfo) -> tuple[str, float, float]:
            t_boot = wait_for_console(Path(g.console_log), f"{READY_MARKER} {g.name}", opts.boot_timeout_s,
                                      alive=lambda: running(g.name))
            t_ssh = wait_for_ssh(g.ssh_host, g.ssh_port, "root", img.ssh_key, timeout_s=60.0)
            return g.name, t_boot, t_ssh

        with console.status(f"booting {len(guests)} guests ({accel}) and waiting for SSH"):
            with ThreadPoolExecutor(len(guests)) as pool:
                for name, t_boot, t_ssh in pool.map(ready, guests):
                    console.print(f"  {name}: ready in {t_boot:.1f} s, SSH after {t_ssh:.1f} s more")

        topo = Topology(
            state_dir=str(sdir), uri=uri, accel=accel, ssh_user="root", ssh_key=str(img.ssh_key),
            image={"recipe_hash": img.recipe_hash, "kernel_version": img.kernel_version, "dir": str(img.dir)},
            device_model=DeviceModelInfo(socket_dir=str(sock_dir), pid=dm_pid, ports=[p for _, p in names],
                                         log=str(dm_log)),
            guests=guests,
            supervisor_pid=sup_pid,
            options=opts.fingerprint(),
        )
        topo.save(tpath)
        publish_classifier_settings(topo, console)
        return topo
    except BaseException:
        if sup_pid:
            stop_supervisor(sdir, sup_pid, console)
        if dm_pid:
            devicemodel.stop(dm_pid)
        stop_leftovers(sdir, console, ask_supervisor=False)  # e.g. a supervisor that failed to start its guests
        raise


CLASSIFIER_FILE = "/etc/isostack/classifier.json"


def publish_classifier_settings(topo: Topology, console: Console) -> None:
    """Write each guest's vhea port classifier settings (queues, RSS key, hash types, RETA, rules) to
    /etc/isostack/classifier.json in the guest, so that software there can predict the rx queue of a flow
    (isostack/rss.py). The guest cannot learn them from its NIC: QEMU does not offer VIRTIO_NET_F_RSS over
    vhost-user. Run again after changing rules or RSS with `vhea rule` / `vhea rss` (`testbed up` on a
    running testbed does). A failure is a warning: only queue prediction in the guest needs the file.
    """
    for g in topo.guests:
        try:
            res = subprocess.run(devicemodel.vhea_command() + ["rss", "show", "--socket-dir",
                                                               topo.device_model.socket_dir, "--port", g.port,
                                                               "--json"],
                                 capture_output=True, text=True, timeout=10)
            if res.returncode != 0:
                raise RuntimeError(res.stderr.strip() or f"vhea rss show exited {res.returncode}")
            settings = json.loads(res.stdout)
            for k in ("ok", "counters"):
                settings.pop(k, None)
            client = connect(g.ssh_host, g.ssh_port, topo.ssh_user, Path(topo.ssh_key))
            try:
                code, _, err = run(client, f"mkdir -p {os.path.dirname(CLASSIFIER_FILE)}", timeout_s=20)
                if code != 0:
                    raise RuntimeError(err.strip())
                with client.open_sftp() as sftp:
                    sftp.putfo(io.BytesIO(json.dumps(settings, indent=1).encode() + b"\n"), CLASSIFIER_FILE + ".tmp")
                    sftp.posix_rename(CLASSIFIER_FILE + ".tmp", CLASSIFIER_FILE)
            finally:
                client.close()
        except Exception as e:  # any failure here is reported, never fatal
            console.print(f"[yellow]warning: could not write {CLASSIFIER_FILE} in {g.name}: {e}[/]")


def restart_device_model(sdir: Path, console: Console, reconnect_timeout_s: float = 30.0) -> int:
    """Stop the testbed's `vhea serve` (if it still runs) and start it again with the same arguments.

    The guests' QEMUs are vhost-user clients with `reconnect`, so they replay the whole handshake with the new
    back-end and traffic resumes; TCP connections in the guests survive a gap of a few seconds. Rules and RSS
    settings made at run time with `vhea rule` / `vhea rss` are not kept (a new process starts with the
    defaults), so the guests' classifier files are written again. Returns the new PID.
    """
    tpath = topology_path(sdir)
    if not tpath.exists():
        raise FileNotFoundError(f"no testbed is up in {sdir}")
    topo = Topology.load(tpath)
    dm = topo.device_model
    if devicemodel.pid_alive(dm.pid) and devicemodel.is_vhea(dm.pid):
        devicemodel.stop(dm.pid)
        console.print(f"stopped the device model (pid {dm.pid})")
    else:
        console.print(f"the device model (pid {dm.pid}) was not running")
    # a topology.json from before flow control existed: its vhea ran without it
    new_pid = devicemodel.start(Path(dm.socket_dir), dm.ports, int(topo.options.get("queues", 1)), Path(dm.log),
                                pid_file=sdir / VHEA_PID_FILE, flow_control=bool(topo.options.get("flow_control")),
                                pause_max_us=topo.options.get("pause_max_us"))
    topo.device_model.pid = new_pid
    topo.save(tpath)  # `testbed down` must stop the new one
    console.print(f"started the device model again (pid {new_pid})")
    if topo.guests:
        with console.status("waiting for the guests' QEMUs to reconnect"):
            deadline = time.monotonic() + reconnect_timeout_s
            ports: dict = {}
            while time.monotonic() < deadline:
                ports = devicemodel.stats(Path(dm.socket_dir))["ports"]
                if all(ports.get(g.port, {}).get("connected") for g in topo.guests):
                    break
                time.sleep(0.25)
            else:
                missing = [g.port for g in topo.guests if not ports.get(g.port, {}).get("connected")]
                raise TimeoutError(f"ports {', '.join(missing)} did not reconnect within {reconnect_timeout_s:.0f} s")
        console.print("every guest reconnected")
        publish_classifier_settings(topo, console)
    return new_pid


def leftover_qemus(sdir: Path) -> list[tuple[int, str]]:
    """(PID, guest) of the QEMUs of our embed root that still run, by libvirt's pid files."""
    found = []
    for pidfile in sorted((sdir / "libvirt" / "run" / "qemu").glob("*.pid")):
        pid = procs.read_pid(pidfile)
        cmd = b"\0".join(procs.cmdline(pid))
        # sdir + "/": the state dir as a path component (/x/tb must not claim the QEMUs of /x/tb-2)
        if b"qemu-system" in cmd and os.fsencode(sdir) + b"/" in cmd and devicemodel.pid_alive(pid):
            found.append((pid, pidfile.stem))
    return found


def kill_leftover_qemus(sdir: Path, console: Console) -> int:
    """Last resort when the supervisor is gone: QEMUs of our embed root, by their pid files; how many."""
    qemus = leftover_qemus(sdir)
    for pid, name in qemus:
        os.kill(pid, signal.SIGKILL)
        console.print(f"killed leftover QEMU {pid} ({name})")
    return len(qemus)


def stop_supervisor(sdir: Path, pid: int, console: Console) -> None:
    """Ask the supervisor to stop the guests and exit; fall back to signals and pid files."""
    try:
        for name in supervisor.request(sdir, "down")["stopped"]:
            console.print(f"stopped {name}")
    except (supervisor.SupervisorError, OSError) as e:
        console.print(f"[yellow]{e}; stopping what is left by PID[/]")
        kill_leftover_qemus(sdir, console)
    deadline = time.monotonic() + 10
    while pid and devicemodel.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def down(sdir: Path, console: Console) -> bool:
    """Stop every guest and the device model of the testbed in `sdir`; True if anything ran.

    Without topology.json (a `testbed up` that was killed before it wrote it) the processes are found through
    the state dir instead: the supervisor's socket and pid file, vhea's pid file and control socket, libvirt's
    QEMU pid files (see stop_leftovers).
    """
    tpath = topology_path(sdir)
    if not tpath.exists():
        return stop_leftovers(sdir, console)
    topo = Topology.load(tpath)
    stop_supervisor(sdir, topo.supervisor_pid, console)
    devicemodel.stop(topo.device_model.pid)
    console.print("stopped the device model")
    stop_leftovers(sdir, console, ask_supervisor=False)  # whatever did not go, and the pid files
    tpath.unlink()
    return True


@dataclass
class Leftovers:
    """The processes of a testbed in a state dir, found without topology.json. Every PID here was checked
    to be ours by its command line (a stale pid file with a reused PID names nobody)."""

    supervisor_pid: int = 0  # a `python -m testbed.supervisor --state-dir <sdir>`
    supervisor_answers: bool = False  # something answers on the supervisor's socket
    device_model_pid: int = 0  # a `vhea serve --socket-dir <sdir>/vhea`
    qemus: list[tuple[int, str]] = field(default_factory=list)  # (PID, guest) from libvirt's pid files

    def __bool__(self) -> bool:
        return bool(self.supervisor_pid or self.supervisor_answers or self.device_model_pid or self.qemus)

    def describe(self) -> str:
        parts = []
        if self.supervisor_pid or self.supervisor_answers:
            pid = f"pid {self.supervisor_pid}" if self.supervisor_pid else "pid unknown"
            parts.append(f"the supervisor ({pid}, {'answering' if self.supervisor_answers else 'not answering'})")
        if self.device_model_pid:
            parts.append(f"the device model (pid {self.device_model_pid})")
        if self.qemus:
            parts.append(", ".join(f"QEMU of {name} (pid {pid})" for pid, name in self.qemus))
        return "; ".join(parts) or "nothing"


def socket_peer_pid(path: Path) -> int:
    """The PID of the process listening on a Unix socket (SO_PEERCRED), 0 if nobody listens there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(path))
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


def _our_pid(candidates: list[int], is_ours: Callable[[int], bool]) -> int:
    """The first candidate PID that runs and is ours by its command line, else 0."""
    return next((pid for pid in candidates if pid and devicemodel.pid_alive(pid) and is_ours(pid)), 0)


def find_leftovers(sdir: Path, ask_supervisor: bool = True) -> Leftovers:
    """What of a testbed runs in `sdir`, by its pid files and sockets (not by topology.json)."""
    sock_dir = sdir / "vhea"
    left = Leftovers(
        supervisor_pid=_our_pid([procs.read_pid(sdir / supervisor.PID_FILE),
                                 procs.read_pid(sdir / supervisor.READY_FILE)],
                                lambda pid: supervisor.is_supervisor_of(pid, sdir)),
        device_model_pid=_our_pid([procs.read_pid(sdir / VHEA_PID_FILE),
                                   socket_peer_pid(devicemodel.control_socket(sock_dir))],
                                  lambda pid: devicemodel.serves(pid, sock_dir)),
        qemus=leftover_qemus(sdir),
    )
    if ask_supervisor and supervisor.socket_path(sdir).exists():
        try:
            supervisor.request(sdir, "status", timeout_s=5.0)
            left.supervisor_answers = True
        except (supervisor.SupervisorError, OSError):
            pass
    return left


def _terminate(pid: int, is_ours: Callable[[int], bool], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after timeout_s; each signal only while the PID still runs and is ours."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not (devicemodel.pid_alive(pid) and is_ours(pid)):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while devicemodel.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_leftovers(sdir: Path, console: Console, ask_supervisor: bool = True,
                   supervisor_timeout_s: float = 10.0) -> bool:
    """Stop a testbed in `sdir` known only by its state dir; True if anything ran.

    The supervisor is asked to stop the guests over its socket (unless `ask_supervisor` is False); one that
    does not answer or does not exit is signalled (SIGTERM makes it stop the guests, SIGKILL after
    `supervisor_timeout_s`); QEMUs still running are killed by their pid files; then vhea is stopped. Only
    PIDs whose command line shows this state dir's supervisor, vhea or QEMU are signalled. The pid files and
    sockets nobody listens on are removed.
    """
    sock_dir = sdir / "vhea"
    left = find_leftovers(sdir, ask_supervisor=False)
    answered = False
    if ask_supervisor and supervisor.socket_path(sdir).exists():
        try:
            stopped = supervisor.request(sdir, "down")["stopped"]
            answered = True
            console.print(f"the supervisor stopped {', '.join(stopped) or 'no guests'}")
        except (supervisor.SupervisorError, OSError) as e:
            console.print(f"[yellow]the supervisor does not answer ({e}); stopping what is left by PID[/]")
    ran = answered
    if left.supervisor_pid:
        ran = True
        pid = left.supervisor_pid
        deadline = time.monotonic() + supervisor_timeout_s
        while answered and devicemodel.pid_alive(pid) and time.monotonic() < deadline:  # it exits after "down"
            time.sleep(0.05)
        _terminate(pid, lambda p: supervisor.is_supervisor_of(p, sdir), supervisor_timeout_s)
        console.print(f"stopped the supervisor (pid {pid})")
    ran = kill_leftover_qemus(sdir, console) > 0 or ran
    if left.device_model_pid:
        ran = True
        _terminate(left.device_model_pid, lambda p: devicemodel.serves(p, sock_dir), 5.0)
        console.print(f"stopped the device model (pid {left.device_model_pid})")
    for name in (supervisor.PID_FILE, supervisor.READY_FILE, VHEA_PID_FILE):
        (sdir / name).unlink(missing_ok=True)
    for path in [supervisor.socket_path(sdir), *sorted(sock_dir.glob("*.sock"))]:
        if path.is_socket() and not socket_peer_pid(path):
            path.unlink(missing_ok=True)
    return ran


def status(sdir: Path) -> tuple[Topology, dict[str, str], dict | None]:
    """The topology, each guest's libvirt state, and the device model's counters (or None)."""
    tpath = topology_path(sdir)
    if not tpath.exists() and (left := find_leftovers(sdir)):
        raise FileNotFoundError(f"no testbed is up: {tpath} does not exist (a `testbed up` was interrupted?), but"
                                f" these still run: {left.describe()}; `testbed down` stops them")
    topo = Topology.load(tpath)
    try:
        states = supervisor.request(sdir, "status")["domains"]
    except supervisor.SupervisorError:
        states = {g.name: "unknown (no supervisor)" for g in topo.guests}
    try:
        counters = devicemodel.stats(Path(topo.device_model.socket_dir))
    except (devicemodel.DeviceModelError, OSError, ValueError):
        counters = None
    return topo, states, counters

"""Taking the testbed down: by topology.json, or by the pid files, sockets and peer namespace an interrupted
`up` left.

Every PID is checked to be ours by its command line before it is signalled, so a stale pid file with a
reused PID never stops an unrelated process.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from testbed import devicemodel, peer, procs, supervisor
from testbed.state import Topology, topology_path

# `testbed up` writes the PID of vhea serve here as soon as it exists (the supervisor's goes to
# supervisor.PID_FILE), so that `testbed down` finds both even if `up` dies before topology.json.
VHEA_PID_FILE = "vhea.pid"


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
    if topo.peer is not None and peer.remove(topo.peer.namespace):
        console.print(f"removed the peer namespace {topo.peer.namespace}")
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
    peer_namespace: str = ""  # the state dir's peer namespace (testbed.peer.namespace_name), if it exists

    def __bool__(self) -> bool:
        return bool(self.supervisor_pid or self.supervisor_answers or self.device_model_pid or self.qemus
                    or self.peer_namespace)

    def describe(self) -> str:
        parts = []
        if self.supervisor_pid or self.supervisor_answers:
            pid = f"pid {self.supervisor_pid}" if self.supervisor_pid else "pid unknown"
            parts.append(f"the supervisor ({pid}, {'answering' if self.supervisor_answers else 'not answering'})")
        if self.device_model_pid:
            parts.append(f"the device model (pid {self.device_model_pid})")
        if self.qemus:
            parts.append(", ".join(f"QEMU of {name} (pid {pid})" for pid, name in self.qemus))
        if self.peer_namespace:
            parts.append(f"the peer namespace {self.peer_namespace}")
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
        peer_namespace=ns if peer.exists(ns := peer.namespace_name(sdir)) else "",
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
    if left.peer_namespace and peer.remove(left.peer_namespace):
        ran = True
        console.print(f"removed the peer namespace {left.peer_namespace}")
    for name in (supervisor.PID_FILE, supervisor.READY_FILE, VHEA_PID_FILE):
        (sdir / name).unlink(missing_ok=True)
    for path in [supervisor.socket_path(sdir), *sorted(sock_dir.glob("*.sock"))]:
        if path.is_socket() and not socket_peer_pid(path):
            path.unlink(missing_ok=True)
    return ran

"""Running the device model (`vhea serve`) as a background process of the testbed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed import procs


class DeviceModelError(RuntimeError):
    pass


def vhea_command() -> list[str]:
    """The vhea of this venv (so the testbed never picks up another install)."""
    exe = Path(sys.executable).parent / "vhea"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vhea.cli"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(socket_dir: Path, ports: list[str], queues: int, log: Path, timeout_s: float = 15.0,
          pid_file: Path | None = None, flow_control: bool = False, pause_max_us: int | None = None) -> int:
    """Start `vhea serve` detached (own session) and wait until every port socket exists.

    `pid_file` gets the PID as soon as the process exists, so that whoever is interrupted while it starts
    leaves a trace that `testbed down` can follow. `flow_control`: 802.3x pause on every port (`--flow-control`),
    with `pause_max_us` as its limit (vhea's default when None).
    """
    socket_dir.mkdir(parents=True, exist_ok=True)
    for p in ports:
        (socket_dir / f"{p}.sock").unlink(missing_ok=True)
    cmd = vhea_command() + ["serve", "--socket-dir", str(socket_dir), "--ports", ",".join(ports),
                            "--queues", str(queues)]
    if flow_control:
        cmd.append("--flow-control")
    if pause_max_us is not None:
        cmd += ["--pause-max-us", str(pause_max_us)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    if pid_file is not None:
        pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise DeviceModelError(f"vhea serve exited with {proc.returncode}: " + " | ".join(tail))
        if all((socket_dir / f"{p}.sock").exists() for p in ports):
            return proc.pid
        time.sleep(0.1)
    proc.terminate()
    raise DeviceModelError(f"vhea serve did not create its sockets in {socket_dir} within {timeout_s:.0f} s")


def is_vhea(pid: int) -> bool:
    """Guard against a recycled PID: only signal a process that is a `vhea serve`."""
    argv = procs.cmdline(pid)
    return any(b"vhea" in a for a in argv) and b"serve" in argv


def serves(pid: int, socket_dir: Path) -> bool:
    """Whether `pid` is a `vhea serve` with exactly this --socket-dir (the one of a given testbed)."""
    return is_vhea(pid) and procs.runs_with(pid, b"--socket-dir", socket_dir)


def control_socket(socket_dir: Path) -> Path:
    """The control socket `vhea serve` listens on next to its port sockets (vhea.ctl.control_path)."""
    return socket_dir / "control.sock"


def stop(pid: int, timeout_s: float = 5.0) -> None:
    """SIGTERM the device model we started, SIGKILL if it does not go."""
    if not pid_alive(pid) or not is_vhea(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def stats(socket_dir: Path) -> dict:
    """The device model's counters, through `vhea stats --json`."""
    res = subprocess.run(vhea_command() + ["stats", "--socket-dir", str(socket_dir), "--json"],
                         capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise DeviceModelError(f"vhea stats failed: {res.stderr.strip()}")
    return json.loads(res.stdout)


def port_add_help() -> str:
    """`vhea port add --help` of this venv's vhea ("" if it cannot say)."""
    try:
        res = subprocess.run(vhea_command() + ["port", "add", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout if res.returncode == 0 else ""


def tap_ports_supported() -> bool:
    """Whether this vhea can back a port with a TAP device (`vhea port add ... --tap`)."""
    return "--tap" in port_add_help()


def add_tap_port(socket_dir: Path, port: str, ifname: str) -> None:
    """Ask the running vhea for a port backed by the TAP device `ifname`, which it creates DOWN in its own
    network namespace (the caller moves it, addresses it and brings it up)."""
    # The port's name option: vhea's `port add` has --name (the TAP-port interface adds --port as its alias).
    name_flag = "--name" if "--name" in port_add_help() else "--port"
    res = subprocess.run(vhea_command() + ["port", "add", "--socket-dir", str(socket_dir), name_flag, port, "--tap",
                                           "--ifname", ifname], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise DeviceModelError(f"vhea port add --tap {port} ({ifname}) failed: "
                               f"{res.stderr.strip() or res.stdout.strip()}")

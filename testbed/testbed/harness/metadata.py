"""What a stored result records about where it was measured, so runs can be compared honestly later: the
host (CPU model, kernel, versions) once per run, and its load average around each case (a host busy with
something else moves the figures: the report marks such a case suspect).
"""

from __future__ import annotations

import platform
import socket
import subprocess
from pathlib import Path


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """First line of a command's stdout, or None if it is not there or fails (metadata is best effort)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    out = p.stdout.strip()
    return out or None


def git_info(repo: Path) -> dict:
    """Commit and whether the work tree differs from it (a dirty result is not reproducible from the hash)."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo) if commit else None
    return {"commit": commit, "dirty": bool(status) if commit else None}


def libvirt_version() -> str | None:
    try:
        import libvirt
    except ImportError:
        return None
    v = libvirt.getVersion()
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def qemu_version() -> str | None:
    out = _run(["qemu-system-x86_64", "--version"])
    return out.splitlines()[0] if out else None


def host_metadata(repo: Path) -> dict:
    return {
        "git": git_info(repo),
        "hostname": socket.gethostname(),
        "host_kernel": platform.release(),
        "host_cpu_count": _cpu_count(),
        "host_cpu_model": cpu_model(),
        "python": platform.python_version(),
        "qemu": qemu_version(),
        "libvirt": libvirt_version(),
    }


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The host CPU's "model name" (the first one; None where /proc/cpuinfo has none, e.g. some ARM hosts)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def parse_loadavg(text: str) -> dict | None:
    """/proc/loadavg ("0.52 0.58 0.59 1/467 12345") as {"1m", "5m", "15m", "runnable", "threads"}; None if not."""
    fields = text.split()
    try:
        runnable, _, threads = fields[3].partition("/")
        return {"1m": float(fields[0]), "5m": float(fields[1]), "15m": float(fields[2]),
                "runnable": int(runnable), "threads": int(threads)}
    except (IndexError, ValueError):
        return None


def loadavg(path: Path = Path("/proc/loadavg")) -> dict | None:
    """The host's load average now (parse_loadavg), None where it cannot be read."""
    try:
        return parse_loadavg(path.read_text())
    except OSError:
        return None

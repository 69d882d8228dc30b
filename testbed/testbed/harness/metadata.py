"""What a stored result records about where it was measured, so runs can be compared honestly later."""

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
        "python": platform.python_version(),
        "qemu": qemu_version(),
        "libvirt": libvirt_version(),
    }


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()

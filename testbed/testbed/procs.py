"""Reading a process's command line, to recognise the testbed's own processes by PID.

A PID from a file can outlive its process and be reused by another, so nothing is signalled on a recorded PID
alone: its command line has to say that it is the process we started, for this state dir.
"""

from __future__ import annotations

import os
from pathlib import Path


def cmdline(pid: int) -> list[bytes]:
    """The argv of `pid` ([] when it does not exist or cannot be read)."""
    if pid <= 0:
        return []
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def runs_with(pid: int, option: bytes, value: str | Path) -> bool:
    """Whether `pid` was started with `option value` (as two arguments) on its command line."""
    argv = cmdline(pid)
    return option in argv[:-1] and argv[argv.index(option) + 1] == os.fsencode(value)


def read_pid(path: Path) -> int:
    """The PID in a pid file, 0 when there is none or it is not a PID."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    return pid if pid > 0 else 0

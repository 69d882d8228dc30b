"""Helpers for tests that drive the testbed's CLIs in subprocesses (the `vm` tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: testbed, vhea, fab


def run(args: list[str], timeout: float, env: dict | None = None, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root; with `check`, a non-zero exit fails with its output."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, input=stdin)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def qemu_pids(state_dir: Path) -> list[int]:
    """QEMU processes whose command line names this testbed's state dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and str(state_dir).encode() in cmd:
                pids.append(int(proc.name))
    return pids

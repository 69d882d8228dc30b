"""Helpers for tests that drive the testbed's CLIs in subprocesses (the `vm` tests); the fixtures that bring a
testbed up and down (conftest.py) use `Testbed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testbed.state import Topology

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: testbed, vhea, fab


def run(args: list[str], timeout: float, env: dict | None = None, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root; with `check`, a non-zero exit fails with its output."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, input=stdin)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def run_playbook_cases(playbook: str, state: Path, env: dict) -> tuple[dict, subprocess.CompletedProcess]:
    """`fab run-benchmark` of `playbook` into <state>/results; its cases by (test name, stack) and fab's output."""
    results = state / "results"
    out = run([str(BIN / "fab"), "run-benchmark", "--playbook", playbook, "--results-dir", str(results)],
              timeout=600, env=env, check=False)
    run_json = next(results.glob("*/run.json"), None)
    assert run_json is not None, f"no run stored\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return {(c["test_name"], c["stack"]): c for c in json.loads(run_json.read_text())["cases"]}, out


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


class Testbed:
    """A testbed of a test module's own, in its own state dir (ISOSTACK_STATE_DIR), driven through the CLIs as a
    user drives it (libvirt's embedded driver allows one root per process, and the unit tests open another)."""

    __test__ = False  # a helper, not a test class (pytest collects Test* names)

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = dict(os.environ, ISOSTACK_STATE_DIR=str(state))
        self.topology_path = state / "topology.json"
        self.sock_dir = str(state / "vhea")

    def up(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """`testbed up` (with its flags); fails the test with the output when it exits non-zero."""
        return run([str(BIN / "testbed"), "up", *args], timeout=timeout, env=self.env)

    def down(self, timeout: float = 180) -> subprocess.CompletedProcess:
        """`testbed down`, unchecked: the teardown that runs whatever happened (a test that checks it says so)."""
        return subprocess.run([str(BIN / "testbed"), "down"], env=self.env, capture_output=True, timeout=timeout,
                              cwd=REPO)

    def topology(self) -> Topology:
        return Topology.load(self.topology_path)

    def ssh(self, guest: str, cmd: str, timeout: float = 120, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        return run([str(BIN / "testbed"), "ssh", guest, cmd], timeout, self.env, check, stdin)

"""The `vhea serve` a bench measures: started as a child process (what a user runs), its counters read over
the control socket, its CPU time from /proc. Shared by the DPDK and Python front-end cases of `vhea bench`
and by `testbed bench-vm`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import NamedTuple

from .ctl import control_path, query

#: traffic runs this long before a measuring window opens
WARMUP_S = 1.0


class PortCounts(NamedTuple):
    """vhea's counters of the a -> b path, from its stats."""

    into_b: int  # frames vhea put into port b
    taken_from_a: int  # frames vhea took from port a's tx ring (delivered to b or dropped there)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vhea_stats(sockdir: str) -> dict:
    return query(sockdir, {"cmd": "stats"})


def port_counts(sockdir: str) -> PortCounts:
    ports = vhea_stats(sockdir)["ports"]
    return PortCounts(ports["b"]["to_guest_frames"], ports["a"]["from_guest_frames"])


def wait_until(cond, what: str, timeout: float = 30.0, procs: tuple = ()) -> None:
    """Poll `cond` until true; RuntimeError on timeout or when one of `procs` (testpmds) has exited."""
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{what}: testpmd exited early, see {p.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out")
        time.sleep(0.1)


@contextlib.contextmanager
def vhea_server(sockdir: str, log_path: str, datapath: str = "auto"):
    """`vhea serve` for ports a, b as a child process (what a user runs)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vhea.cli", "serve", "--socket-dir", sockdir, "--ports", "a,b",
                                 "--log-level", "warning", "--datapath", datapath], stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(control_path(sockdir)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vhea serve did not start, see {log_path}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""The DPDK cases of `vhea bench`: the anchor (testpmd virtio-user -> DPDK's own vhost PMD, no vhea) and vhea
between two testpmd virtio-user ports.

testpmd processes get `-l 0,1` with different --main-lcore and --file-prefix, --no-huge -m 1024 --no-pci,
and run under `timeout` so none can outlive the bench; only processes started here are ever stopped.
Rates are counted at the receiver, from testpmd's interactive `show port stats all`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import NamedTuple

from . import testpmd
from .bench_serve import WARMUP_S, port_counts, proc_cpu_s, vhea_stats, wait_until


class ProbeDelta(NamedTuple):
    """How vhea's PortCounts grew in a measuring window of `seconds`."""

    into_b: int
    taken_from_a: int
    seconds: float


class DpdkFigure(NamedTuple):
    fps: float  # frames/s counted by the receiving testpmd
    cpu: float | None  # cores vhea (the pid measured) used in the window; None for the anchor
    probed: ProbeDelta | None  # vhea's own counts in the window; None for the anchor


def _testpmd_cmd(vdev: str, prefix: str, main_lcore: int, timeout_s: int) -> list[str]:
    # stdbuf: testpmd writes its statistics with printf; line-buffered, they reach the log when asked for
    return ["timeout", "--kill-after=5", str(timeout_s), "stdbuf", "-oL", "dpdk-testpmd", "-l", "0,1", "--main-lcore",
            str(main_lcore),
            "--no-huge", "-m", "1024", "--no-pci", "--file-prefix", prefix, "--vdev", vdev, "--", "-i",
            "--nb-cores=1", "--rxq=1", "--txq=1"]


_BLOCK = re.compile(r"#+ NIC statistics for port 0\s+#+(.*?)#{10,}", re.S)


def _rx_after(tp: testpmd.Testpmd, before: int, timeout: float = 10.0) -> int:
    """RX-packets of port 0 from the first stats block after the first `before` blocks of the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blocks = _BLOCK.findall(tp.output())
        if len(blocks) > before:
            m = re.search(r"RX-packets:\s+(\d+)", blocks[before])
            return int(m.group(1)) if m else 0
        time.sleep(0.05)
    raise RuntimeError(f"testpmd gave no port statistics (log {tp.log_path})")


def _rx_count(rx: testpmd.Testpmd, seconds: float, pid: int | None = None) -> tuple[int, float, float | None]:
    """Frames the receiver counted in `seconds`, the time taken, and the cores `pid` used meanwhile."""
    before = len(_BLOCK.findall(rx.output()))
    rx.send("clear port stats all")
    t0 = time.monotonic()
    c0 = proc_cpu_s(pid) if pid else 0.0
    time.sleep(seconds)
    rx.send("show port stats all")
    t1 = time.monotonic()
    cpu = (proc_cpu_s(pid) - c0) / (t1 - t0) if pid else None
    return _rx_after(rx, before), t1 - t0, cpu


def _measure_testpmd(tx: testpmd.Testpmd, rx: testpmd.Testpmd, size: int, seconds: float,
                     pid: int | None = None, probe=None) -> DpdkFigure:
    """Switch the sender to `size`, wait for traffic, count what the receiver gets in `seconds`: frames/s, the
    CPU share of `pid`, and how much `probe()` (vhea's PortCounts) grew meanwhile."""
    tx.send("stop", f"set txpkts {size}", "start")
    deadline = time.monotonic() + 15
    while _rx_count(rx, WARMUP_S / 2)[0] == 0:  # links come up a little after start
        if time.monotonic() > deadline:
            return DpdkFigure(0.0, None, None)
    time.sleep(WARMUP_S / 2)
    for _attempt in range(2):
        p0 = probe() if probe else None
        n, dt, cpu = _rx_count(rx, seconds, pid)
        probed = ProbeDelta(*(b - a for a, b in zip(p0, probe(), strict=True)), dt) if probe else None
        # The receiver's count is read from testpmd's interactive output: a window in which it read 0 while vhea
        # delivered frames into port b is a lost reading, not a figure: once more.
        if n or not probed or not probed.into_b:
            break
    return DpdkFigure(n / dt, cpu, probed)


def _stop_testpmd(tp: testpmd.Testpmd) -> None:
    """Quit a testpmd this bench started, and remove its EAL runtime directory (named by our --file-prefix)."""
    try:
        tp.send("stop")
    except (BrokenPipeError, OSError):
        pass
    tp.quit(10)
    if tp.prefix:
        shutil.rmtree(os.path.join("/var/run/dpdk", tp.prefix), ignore_errors=True)


def _start_testpmd(vdev: str, prefix: str, main_lcore: int, timeout_s: int, log: str) -> testpmd.Testpmd:
    return testpmd.Testpmd(_testpmd_cmd(vdev, prefix, main_lcore, timeout_s), log, prefix)


def _testpmd_budget(sizes: list[int], seconds: float) -> int:
    """Seconds a bench's testpmd may live (its `timeout`): start-up, each size's warm-up and window, the stop."""
    return int(10 + len(sizes) * (seconds + WARMUP_S + 3) + 30)


def bench_anchor(workdir: str, sizes: list[int], seconds: float) -> dict[int, DpdkFigure]:
    """testpmd virtio-user txonly -> testpmd vhost PMD rxonly (no vhea: no CPU share, no probe)."""
    sock = os.path.join(workdir, "anchor.sock")
    budget = _testpmd_budget(sizes, seconds)
    tag = f"{os.getpid()}"
    rx = _start_testpmd(f"net_vhost0,iface={sock},queues=1", f"vhbA{tag}", 1, budget,
                        os.path.join(workdir, "anchor-vhost.log"))
    tx = None
    try:
        rx.send("set fwd rxonly", "start")
        wait_until(lambda: os.path.exists(sock), "vhost PMD socket", procs=(rx,))
        tx = _start_testpmd(f"net_virtio_user0,path={sock},queues=1", f"vhbV{tag}", 0, budget,
                            os.path.join(workdir, "anchor-virtio.log"))
        tx.send("set fwd txonly")
        return {s: _measure_testpmd(tx, rx, s, seconds) for s in sizes}
    finally:
        for tp in (tx, rx):
            if tp is not None:
                _stop_testpmd(tp)


def bench_vhea_dpdk(sockdir: str, workdir: str, sizes: list[int], seconds: float,
                    pid: int | None = None) -> dict[int, DpdkFigure]:
    """testpmd virtio-user txonly on vhea's port a -> testpmd virtio-user rxonly on port b; `pid` is vhea's."""
    budget = _testpmd_budget(sizes, seconds)
    tag = f"{os.getpid()}"
    rx = _start_testpmd(f"net_virtio_user0,path={sockdir}/b.sock,queues=1", f"vhbB{tag}", 1, budget,
                        os.path.join(workdir, "vhea-b.log"))
    tx = None
    try:
        rx.send("set fwd rxonly", "start")
        wait_until(lambda: vhea_stats(sockdir)["ports"]["b"]["connected"], "testpmd on port b", procs=(rx,))
        tx = _start_testpmd(f"net_virtio_user0,path={sockdir}/a.sock,queues=1", f"vhbT{tag}", 0, budget,
                            os.path.join(workdir, "vhea-a.log"))
        tx.send("set fwd txonly")
        wait_until(lambda: vhea_stats(sockdir)["ports"]["a"]["connected"], "testpmd on port a", procs=(tx,))
        time.sleep(1.0)  # queues set up
        return {s: _measure_testpmd(tx, rx, s, seconds, pid, lambda: port_counts(sockdir)) for s in sizes}
    finally:
        for tp in (tx, rx):
            if tp is not None:
                _stop_testpmd(tp)

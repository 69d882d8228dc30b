"""CPU accounting: busy % per CPU from /proc/stat snapshots taken at the marks, and the --cpu check."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import IsoperfError


@dataclass(frozen=True)
class CpuTimes:
    """Jiffies of one CPU line of /proc/stat, reduced to what busy % needs."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """Parse the cpu lines of /proc/stat into {"all": ..., "cpu0": ..., ...}.

    Idle and iowait count as not busy; guest/guest_nice are already included in user/nice, so they are
    left out of the total to avoid counting them twice.
    """
    cpus: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        values = [int(v) for v in fields[:8]]
        if len(values) < 4:
            raise ValueError(f"short /proc/stat line: {line!r}")
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        total = user + nice + system + idle + iowait + irq + softirq + steal
        cpus["all" if name == "cpu" else name] = CpuTimes(busy=total - idle - iowait, total=total)
    if not cpus:
        raise ValueError("no cpu lines in /proc/stat text")
    return cpus


def read_proc_stat(path: str = "/proc/stat") -> dict[str, CpuTimes]:
    with open(path) as f:
        return parse_proc_stat(f.read())


def cpu_busy_percent(before: dict[str, CpuTimes], after: dict[str, CpuTimes]) -> dict[str, float]:
    """Busy % per CPU between two snapshots (CPUs missing from either snapshot are skipped)."""
    result: dict[str, float] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            continue
        total = a.total - b.total
        result[name] = round(100.0 * (a.busy - b.busy) / total, 2) if total > 0 else 0.0
    return result


def check_cpu(cpu: int) -> None:
    """IsoperfError unless this process may run on `cpu`."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu not in allowed:
        count = os.cpu_count() or 0
        if cpu >= count:
            raise IsoperfError(f"CPU {cpu} does not exist (this machine has CPUs 0-{count - 1})")
        raise IsoperfError(f"CPU {cpu} is not one this process may run on ({', '.join(map(str, allowed))})")

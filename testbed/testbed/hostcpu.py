"""Host CPU time of the testbed's processes and threads, read from /proc: where a guest's CPU is really spent.

A guest's own /proc/stat bills a vCPU the host descheduled as busy, so the cost of a message is measured on
the host too: utime + stime of each vCPU thread of a guest's QEMU (QEMU names them "CPU <n>/TCG" or
"CPU <n>/KVM"; single-threaded TCG has one "ALL CPUs/TCG"), of vhea and of the peer. The proc root is a
parameter so that parsing is tested on canned files; nothing here signals or changes a process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PROC = Path("/proc")
VCPU_COMM = re.compile(r"^CPU (\d+)/(TCG|KVM|HVF|WHPX)$")
ALL_VCPUS_COMM = re.compile(r"^ALL CPUs/(TCG)$")  # single-threaded TCG: every vCPU on one thread
ALL_VCPUS = -1  # the vcpu index of that one thread

# Fields of /proc/<pid>/stat counted from 1 (proc(5)); after the ")" that closes comm, field 3 is first.
_UTIME, _STIME, _PROCESSOR = 14, 15, 39


class ProcError(Exception):
    """A /proc file is missing (the process ended) or not in the expected format."""


def clock_ticks() -> int:
    """Clock ticks per second of utime/stime (USER_HZ)."""
    return os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StatTimes:
    """The CPU fields of one stat line: ticks in user and kernel mode, and the CPU it last ran on."""
    utime: int
    stime: int
    last_cpu: int

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


def parse_stat(text: str) -> StatTimes:
    """utime, stime and processor of a /proc/<pid>[/task/<tid>]/stat line (comm may hold spaces and parens)."""
    close = text.rfind(")")
    if close < 0:
        raise ProcError(f"not a stat line: {text[:60]!r}")
    fields = text[close + 1:].split()
    try:
        return StatTimes(int(fields[_UTIME - 3]), int(fields[_STIME - 3]), int(fields[_PROCESSOR - 3]))
    except (IndexError, ValueError):
        raise ProcError(f"not a stat line: {text[:60]!r}") from None


def parse_cpu_list(text: str) -> list[int]:
    """A CPU list as in Cpus_allowed_list ("0-2,5") as [0, 1, 2, 5]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def parse_affinity(status_text: str) -> list[int] | None:
    """The CPUs a task may run on (Cpus_allowed_list of /proc/<pid>/task/<tid>/status: its sched_getaffinity)."""
    for line in status_text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpu_list(line.split(":", 1)[1])
    return None


@dataclass(frozen=True)
class ThreadSample:
    """One thread at one moment: its name, CPU ticks, the CPU it last ran on and its affinity."""
    tid: int
    comm: str
    times: StatTimes
    affinity: list[int] | None

    def vcpu(self) -> tuple[int, str] | None:
        """(vCPU index, accelerator) if this is a QEMU vCPU thread (ALL_VCPUS for single-threaded TCG)."""
        if m := VCPU_COMM.match(self.comm):
            return int(m.group(1)), m.group(2)
        if m := ALL_VCPUS_COMM.match(self.comm):
            return ALL_VCPUS, m.group(1)
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise ProcError(f"cannot read {path}: {e.strerror or e}") from None


def process_times(pid: int, proc_root: Path = PROC) -> StatTimes:
    """The CPU ticks of a whole process (all its threads, live or ended; not its children)."""
    return parse_stat(_read(proc_root / str(pid) / "stat"))


def threads(pid: int, proc_root: Path = PROC) -> list[ThreadSample]:
    """Every thread of `pid` now; a thread that ends while being read is left out."""
    task = proc_root / str(pid) / "task"
    try:
        tids = sorted(int(t.name) for t in task.iterdir() if t.name.isdigit())
    except OSError as e:
        raise ProcError(f"cannot list {task}: {e.strerror or e}") from None
    out = []
    for tid in tids:
        try:
            comm = _read(task / str(tid) / "comm").strip()
            times = parse_stat(_read(task / str(tid) / "stat"))
        except ProcError:
            continue
        try:
            affinity = parse_affinity(_read(task / str(tid) / "status"))
        except (ProcError, ValueError):
            affinity = None
        out.append(ThreadSample(tid, comm, times, affinity))
    return out


def vcpu_threads(pid: int, proc_root: Path = PROC) -> dict[int, ThreadSample]:
    """QEMU's vCPU threads by vCPU index (ALL_VCPUS for single-threaded TCG); {} if it names none."""
    found = {}
    for t in threads(pid, proc_root):
        if (v := t.vcpu()) is not None:
            found[v[0]] = t
    return found


def seconds(before: StatTimes, after: StatTimes, ticks_per_s: int) -> float:
    """CPU seconds between two samples of one task."""
    return max(0, after.ticks - before.ticks) / ticks_per_s


def cmdline(pid: int, proc_root: Path = PROC) -> list[str]:
    try:
        raw = (proc_root / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def qemu_pid_file(uri: str, guest: str) -> Path | str:
    """Where libvirt keeps the QEMU pid of `guest` for `uri`, or why this host cannot see that QEMU."""
    parts = urlsplit(uri)
    if parts.hostname or "+" in parts.scheme:
        return f"the guest runs on another host (libvirt URI {uri}): its QEMU threads are not visible here"
    if parts.scheme != "qemu":
        return f"libvirt URI {uri}: not a QEMU driver"
    if parts.path == "/embed":
        root = parse_qs(parts.query).get("root")
        if not root:
            return f"libvirt URI {uri}: the embedded driver needs ?root=DIR"
        return Path(root[0]) / "run" / "qemu" / f"{guest}.pid"
    if parts.path == "/system":
        return Path("/run/libvirt/qemu") / f"{guest}.pid"
    if parts.path == "/session":
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        return Path(runtime) / "libvirt" / "qemu" / "run" / f"{guest}.pid"
    return f"libvirt URI {uri}: no known pid file location"


def qemu_pid(uri: str, guest: str, proc_root: Path = PROC) -> int | str:
    """The PID of the QEMU that runs `guest` (checked by its command line: a qemu-system with -name guest=NAME),
    or why it is not known."""
    where = qemu_pid_file(uri, guest)
    if isinstance(where, str):
        return where
    try:
        pid = int(where.read_text().strip())
    except (OSError, ValueError):
        return f"no QEMU pid in {where} (is the guest running?)"
    argv = cmdline(pid, proc_root)
    name_ok = any(a == f"guest={guest}" or a.startswith(f"guest={guest},") for a in argv)
    if not argv or "qemu-system" not in os.path.basename(argv[0]) or not name_ok:
        return f"PID {pid} in {where} is not the QEMU of {guest}"
    return pid

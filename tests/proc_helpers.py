"""Canned /proc trees for the host CPU accounting tests: processes, their threads and QEMU's vCPU threads."""

from __future__ import annotations

import os
from pathlib import Path


def qemu_argv(guest: str) -> list[str]:
    """The start of a libvirt-started QEMU's command line (libvirt names the guest and turns thread names on)."""
    return ["/usr/bin/qemu-system-x86_64", "-name", f"guest={guest},debug-threads=on", "-S"]


def stat_line(pid: int, comm: str, utime: int, stime: int, last_cpu: int) -> str:
    """A /proc/<pid>/stat line of 52 fields with utime (14), stime (15) and processor (39) set."""
    fields = ["0"] * 52
    fields[0], fields[1], fields[2] = str(pid), f"({comm})", "S"
    fields[13], fields[14], fields[38] = str(utime), str(stime), str(last_cpu)
    return " ".join(fields) + "\n"


def fake_process(proc: Path, pid: int, argv: list[str], thread_list: list[tuple[int, str, int, int, int, str]]
                 ) -> None:
    """A /proc/<pid> with its cmdline, stat (the sum of its threads) and task/<tid>/{comm,stat,status}."""
    base = proc / str(pid)
    (base / "task").mkdir(parents=True, exist_ok=True)
    (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (base / "stat").write_text(stat_line(pid, os.path.basename(argv[0])[:15], sum(t[2] for t in thread_list),
                                         sum(t[3] for t in thread_list), 0))
    for tid, comm, utime, stime, cpu, allowed in thread_list:
        t = base / "task" / str(tid)
        t.mkdir(exist_ok=True)
        (t / "comm").write_text(comm + "\n")
        (t / "stat").write_text(stat_line(tid, comm, utime, stime, cpu))
        (t / "status").write_text(f"Name:\t{comm}\nCpus_allowed:\tf\nCpus_allowed_list:\t{allowed}\nState:\tS\n")


QEMU_ARGV = qemu_argv("iso-a")


class FakeHost:
    """A host in a tmp dir: the QEMUs of iso-a (pid 1000) and iso-b (pid 2000), 2 vCPU threads each pinned to
    host CPU 0 and 1, and vhea (pid 4242) in a canned /proc, with libvirt's pid files of an embed root.
    `burn` adds CPU ticks to a thread, as the client's run would."""

    VHEA_PID = 4242

    def __init__(self, root: Path, vcpu_comm: str = "CPU {n}/TCG"):
        self.proc = root / "proc"
        self.libvirt = root / "libvirt"
        self.uri = f"qemu:///embed?root={self.libvirt}"
        self.argv = {1000: qemu_argv("iso-a"), 2000: qemu_argv("iso-b"),
                     self.VHEA_PID: ["/repo/.venv/bin/python", "/repo/.venv/bin/vhea", "serve", "--socket-dir", "/s"]}
        self.threads: dict[int, dict[int, list]] = {}  # pid -> tid -> [comm, utime, stime, last cpu, allowed]
        for pid in (1000, 2000):
            self.threads[pid] = {pid: ["qemu-system-x86", 100, 20, 0, "0-1"]}
            for n in range(2):
                self.threads[pid][pid + 3 + n] = [vcpu_comm.format(n=n), 1000, 100, n, str(n)]
        self.threads[self.VHEA_PID] = {self.VHEA_PID: ["vhea", 500, 100, 1, "0-1"]}
        run = self.libvirt / "run" / "qemu"
        run.mkdir(parents=True)
        (run / "iso-a.pid").write_text("1000\n")
        (run / "iso-b.pid").write_text("2000\n")
        self.write()

    def write(self) -> None:
        for pid, threads in self.threads.items():
            fake_process(self.proc, pid, self.argv[pid], [(tid, *t) for tid, t in threads.items()])

    def burn(self, pid: int, tid: int, utime: int, stime: int = 0, last_cpu: int | None = None) -> None:
        t = self.threads[pid][tid]
        t[1] += utime
        t[2] += stime
        if last_cpu is not None:
            t[3] = last_cpu
        self.write()


class FakeClock:
    """time.monotonic for a sampler: the given readings in order."""

    def __init__(self, *readings: float):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)

"""Host CPU of a case: the vCPU threads of its guests, vhea and the peer, sampled around the client's run.

The cost figure of the IsoStack vs legacy comparison is messages per host CPU-second of the client guest:
the client's messages/s divided by the host cores its vCPU threads kept busy over the sampled interval
(the client command's whole run, warm-up and start included, as isoperf's rate is of its steady state).
It stands next to the same figure from the guest's own /proc/stat view (isoperf's `cpu.client`), which bills
a vCPU the host descheduled as busy. What cannot be read (a guest on another host, a QEMU that names no vCPU
threads, no peer) is recorded as null with the reason; it never fails a case. Record: docs/results.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbed import hostcpu, state
from testbed.hostcpu import ProcError, StatTimes, ThreadSample


@dataclass
class _Process:
    """One process at the start of the interval: its PID and ticks, or why it cannot be sampled."""
    pid: int | None
    times: StatTimes | None = None
    vcpus: dict[int, ThreadSample] = field(default_factory=dict)
    error: str | None = None
    threads: dict[int, ThreadSample] = field(default_factory=dict)  # vhea, peer: to find the busiest thread


class HostCpuSampler:
    """Knows which host processes a topology's guests and device model are; samples them per case.

    Each guest is looked up by its own libvirt URI and domain name (`guests`: name -> (uri, domain), else
    `uri` and its name): a guest of a merged topology on another host is recorded as null with why."""

    def __init__(self, uri: str, vhea_pid: int | None, proc_root: Path = hostcpu.PROC,
                 ticks_per_s: int | None = None, clock: Callable[[], float] = time.monotonic,
                 guests: dict[str, tuple[str, str]] | None = None):
        self.uri = uri
        self.guests = dict(guests or {})
        self.vhea_pid = vhea_pid
        self.proc_root = proc_root
        self.ticks_per_s = ticks_per_s or hostcpu.clock_ticks()
        self.clock = clock

    @classmethod
    def for_topology(cls, topology: state.Topology, **kwargs) -> HostCpuSampler:
        """The sampler of a topology's guests (each by its own URI and domain) and device model; `kwargs`: the
        proc root, ticks and clock (tests)."""
        return cls(topology.uri, topology.device_model.pid or None,
                   guests={g.name: (topology.guest_uri(g), topology.domain_name(g)) for g in topology.guests},
                   **kwargs)

    def start(self, guests: dict[str, str], peer_pid: int | None = None) -> HostCpuInterval:
        """Sample now; `guests` maps a role (client, server) to a guest name."""
        return HostCpuInterval(self, guests, peer_pid)

    def _guest(self, name: str) -> _Process:
        uri, domain = self.guests.get(name, (self.uri, name))
        pid = hostcpu.qemu_pid(uri, domain, self.proc_root)
        if isinstance(pid, str):
            return _Process(None, error=pid)
        try:
            vcpus = hostcpu.vcpu_threads(pid, self.proc_root)
            times = hostcpu.process_times(pid, self.proc_root)
        except ProcError as e:
            return _Process(pid, error=str(e))
        if not vcpus:
            return _Process(pid, error=f"QEMU {pid} names no vCPU threads (CPU <n>/TCG or /KVM)")
        return _Process(pid, times, vcpus)

    def _process(self, pid: int | None, what: str, must_run: str | None = None) -> _Process:
        if not pid:
            return _Process(None, error=f"no {what} PID")
        if must_run and not any(must_run in a for a in hostcpu.cmdline(pid, self.proc_root)):
            return _Process(pid, error=f"PID {pid} is not {what} (its command line has no {must_run!r})")
        try:
            return _Process(pid, hostcpu.process_times(pid, self.proc_root),
                            threads={t.tid: t for t in hostcpu.threads(pid, self.proc_root)})
        except ProcError as e:
            return _Process(pid, error=str(e))


class HostCpuInterval:
    """A started interval: `stop()` right after the client's run, `record()` once isoperf's result is known."""

    def __init__(self, sampler: HostCpuSampler, guests: dict[str, str], peer_pid: int | None):
        self.sampler = sampler
        self.roles = dict(guests)
        self.started = sampler.clock()
        self.guests = {name: sampler._guest(name) for name in guests.values()}
        self.vhea = sampler._process(sampler.vhea_pid, "vhea", "vhea")
        self.peer = sampler._process(peer_pid, "the peer") if peer_pid else None
        self.ended: float | None = None
        self.after: dict[str, dict] = {}

    def stop(self) -> None:
        """Sample again: the end of the interval."""
        self.ended = self.sampler.clock()
        interval = self.ended - self.started
        self.after = {
            "guests": {name: self._guest_after(p, interval) for name, p in self.guests.items()},
            "vhea": self._process_after(self.vhea, interval),
            "peer": self._process_after(self.peer, interval) if self.peer else None,
        }

    def _seconds(self, before: StatTimes, after: StatTimes, interval: float) -> tuple[float, float | None]:
        s = hostcpu.seconds(before, after, self.sampler.ticks_per_s)
        return round(s, 3), round(100 * s / interval, 1) if interval > 0 else None

    def _process_after(self, p: _Process, interval: float) -> dict:
        """Seconds and % of a host core of the whole process, and its busiest thread: a single-threaded loop
        near 100 % is a bottleneck even where the process total is not."""
        out: dict = {"pid": p.pid, "seconds": None, "pct": None, "busiest_thread": None, "error": p.error}
        if p.error is None and p.times is not None:
            try:
                out["seconds"], out["pct"] = self._seconds(
                    p.times, hostcpu.process_times(p.pid, self.sampler.proc_root), interval)
                now = hostcpu.threads(p.pid, self.sampler.proc_root)
            except ProcError as e:
                out["error"] = str(e)
                return out
            busiest = [(self._seconds(p.threads[t.tid].times, t.times, interval), t) for t in now
                       if t.tid in p.threads and p.threads[t.tid].comm == t.comm]
            if busiest:
                (secs, pct), t = max(busiest, key=lambda item: item[0][0])
                out["busiest_thread"] = {"tid": t.tid, "comm": t.comm, "seconds": secs, "pct": pct}
        return out

    def _guest_after(self, p: _Process, interval: float) -> dict:
        out: dict = {"qemu_pid": p.pid, "accel": None, "vcpus": None, "vcpu_seconds": None, "vcpu_pct": None,
                     "other_threads_seconds": None, "error": p.error}
        if p.error is not None or p.times is None:
            return out
        try:
            now = hostcpu.vcpu_threads(p.pid, self.sampler.proc_root)
            total_after = hostcpu.process_times(p.pid, self.sampler.proc_root)
        except ProcError as e:
            out["error"] = str(e)
            return out
        vcpus = []
        for index, before in sorted(p.vcpus.items()):
            after = now.get(index)
            if after is None or after.tid != before.tid:
                out["error"] = f"vCPU {index}'s thread {before.tid} ended during the case"
                return out
            secs, pct = self._seconds(before.times, after.times, interval)
            vcpus.append({"vcpu": None if index == hostcpu.ALL_VCPUS else index, "tid": after.tid,
                          "comm": after.comm, "seconds": secs, "pct": pct,
                          "affinity": after.affinity, "last_cpu": after.times.last_cpu})
        out["accel"] = (next(iter(p.vcpus.values())).vcpu() or (0, None))[1]
        out["vcpus"] = vcpus
        total = round(sum(v["seconds"] for v in vcpus), 3)
        out["vcpu_seconds"] = total
        out["vcpu_pct"] = round(100 * total / interval, 1) if interval > 0 else None
        whole, _ = self._seconds(p.times, total_after, interval)
        out["other_threads_seconds"] = round(max(0.0, whole - total), 3)
        return out

    def record(self, result: dict | None, client_vcpus: int) -> dict:
        """The case's `host_cpu`: per guest per vCPU, vhea, the peer, and the client's messages per host
        CPU-second next to the same figure from the guest's /proc/stat (isoperf's cpu.client)."""
        if self.ended is None:
            self.stop()
        interval = (self.ended or self.started) - self.started
        guests = self.after["guests"]
        for role, name in self.roles.items():
            guests[name]["role"] = role
        client = self.roles.get("client")
        result = result or {}
        guest_view = (result.get("cpu") or {}).get("client") or {}
        cg = guests.get(client) if client else None
        for v in (cg or {}).get("vcpus") or []:
            busy = guest_view.get(f"cpu{v['vcpu']}")
            v["guest_busy_pct"] = busy if isinstance(busy, (int, float)) else None
        mps = result.get("messages_per_s")
        per_host = per_guest = server_per_host = None
        sg = guests.get(self.roles["server"]) if self.roles.get("server") else None
        if isinstance(mps, (int, float)) and mps > 0:
            if cg and cg.get("vcpu_seconds") and interval > 0:
                per_host = round(mps / (cg["vcpu_seconds"] / interval), 1)
            if sg and sg.get("vcpu_seconds") and interval > 0:  # the receiving guest's cost (peer -> guest)
                server_per_host = round(mps / (sg["vcpu_seconds"] / interval), 1)
            busy = guest_view.get("all")
            if isinstance(busy, (int, float)) and busy > 0:
                per_guest = round(mps / (busy / 100 * max(1, client_vcpus)), 1)
        return {
            "interval_s": round(interval, 3),
            "ticks_per_s": self.sampler.ticks_per_s,
            "client": client,
            "guests": guests,
            "vhea": self.after["vhea"],
            "peer": self.after["peer"],
            "client_messages_per_host_cpu_s": per_host,
            "client_messages_per_guest_cpu_s": per_guest,
            "server_messages_per_host_cpu_s": server_per_host,
        }

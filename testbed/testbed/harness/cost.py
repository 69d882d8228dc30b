"""Where a case's host CPU went, per message: the client guest's vCPUs by role, QEMU's other threads, vhea and
the peer (or the server guest), in host CPU microseconds per message.

The comparison's cost figure is messages per host CPU-second of the client guest; this splits its inverse so a
result says which part holds a ratio back (application, stack vCPU, device model, peer). Every part is
normalized the same way as `host_cpu.client_messages_per_host_cpu_s` (CPU-seconds over the sampled interval,
per message/s of the measured interval), so the guest's vCPU parts add up to its inverse.

Roles of the client's vCPUs come from the record: the application's from the placement the harness chose
(`placement.<client>.app_cpus`; in records from before it, the client command's `taskset -c` or isoperf's
`cpu_binding`), isostackd's from its instances, the NIC interrupts' from the interrupts counted during the
run (where none were counted, the vCPUs they were meant for: `irq_cpus`). Pure: tested on canned records.
"""

from __future__ import annotations

import re

PARTS = ("app vCPU", "stack vCPU", "other vCPUs", "QEMU other", "vhea", "peer/server")
GUEST_PARTS = PARTS[:3]  # the client guest's vCPU threads: the cost figure of the comparison
_TASKSET = re.compile(r"(?:^|\s)taskset -c (\d+(?:,\d+)*)\s")


def _client_placement(case: dict) -> dict:
    entry = (case.get("placement") or {}).get(case.get("client"))
    return entry if isinstance(entry, dict) else {}


def _cpu_list(value) -> set[int]:
    return {c for c in value if isinstance(c, int) and not isinstance(c, bool)} if isinstance(value, list) else set()


def app_cpus(case: dict) -> set[int]:
    """The vCPUs the application was pinned to (empty: not pinned)."""
    recorded = _cpu_list(_client_placement(case).get("app_cpus"))
    if recorded:
        return recorded
    m = _TASKSET.search(((case.get("commands") or {}).get("client") or "") + " ")
    if m:
        return {int(c) for c in m.group(1).split(",")}
    binding = (case.get("isoperf") or {}).get("cpu_binding")
    return {binding} if isinstance(binding, int) else set()


def stack_cpus(case: dict) -> set[int]:
    """isostackd's vCPUs (stack iso), else the vCPUs that took most of the client NIC's interrupts."""
    daemons = case.get("isostackd") or []
    cpus = {d["cpu"] for d in daemons if isinstance(d, dict) and isinstance(d.get("cpu"), int)}
    if cpus:
        return cpus
    placement = _client_placement(case)
    per_cpu: dict[int, int] = {}
    interrupts = placement.get("interrupts") or {}
    for counts in interrupts.values():
        if isinstance(counts, list):
            for cpu, n in enumerate(counts):
                if isinstance(n, int):
                    per_cpu[cpu] = per_cpu.get(cpu, 0) + n
    if not per_cpu or max(per_cpu.values()) <= 0:
        return _cpu_list(placement.get("irq_cpus"))
    top = max(per_cpu.values())
    return {cpu for cpu, n in per_cpu.items() if n >= top / 2}


def breakdown(case: dict) -> dict[str, float] | None:
    """Host CPU µs per message by part (PARTS; a part the case has not is absent), None without the figures."""
    hc = case.get("host_cpu") or {}
    mps = (case.get("isoperf") or {}).get("messages_per_s")
    interval = hc.get("interval_s")
    guests = hc.get("guests") or {}
    client = guests.get(hc.get("client")) if hc.get("client") else None
    if not client or not isinstance(mps, (int, float)) or mps <= 0 or not isinstance(interval, (int, float)) \
            or interval <= 0:
        return None

    def us(seconds: float) -> float:
        return seconds / interval / mps * 1e6

    app, stack = app_cpus(case), stack_cpus(case)
    out: dict[str, float] = {}
    for v in client.get("vcpus") or []:
        cpu, seconds = v.get("vcpu"), v.get("seconds")
        if not isinstance(seconds, (int, float)):
            continue
        part = "app vCPU" if cpu in app else "stack vCPU" if cpu in stack else "other vCPUs"
        out[part] = out.get(part, 0.0) + us(seconds)
    if isinstance(client.get("other_threads_seconds"), (int, float)):
        out["QEMU other"] = us(client["other_threads_seconds"])
    vhea = (hc.get("vhea") or {}).get("seconds")
    if isinstance(vhea, (int, float)):
        out["vhea"] = us(vhea)
    far = (hc.get("peer") or {}).get("seconds")
    if not isinstance(far, (int, float)):
        far = next((g.get("vcpu_seconds") for g in guests.values() if g.get("role") == "server"), None)
    if isinstance(far, (int, float)):
        out["peer/server"] = us(far)
    return {k: round(v, 3) for k, v in out.items()}

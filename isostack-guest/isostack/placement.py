"""Put a NIC's protocol processing on the dispatcher's CPU: IRQ affinity, RPS and XPS of virtio-net queues.

All paths are relative to a proc root and a sys root so that tests can run it against a fake tree.
`place()` returns one human-readable line per file it set (or failed to set), which isostackd logs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return cpus


def format_cpu_list(cpus: set[int]) -> str:
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def cpu_mask(cpus: set[int]) -> str:
    """Hex mask as rps_cpus/xps_cpus want it (comma-separated 32-bit groups)."""
    value = sum(1 << c for c in cpus)
    groups = []
    while True:
        groups.append(f"{value & 0xFFFFFFFF:08x}")
        value >>= 32
        if not value:
            break
    return ",".join(reversed(groups))


def virtio_net_interfaces(sys_root: Path) -> dict[str, str]:
    """{ifname: virtio device name (virtioN)} for every virtio-net interface."""
    found = {}
    net = sys_root / "class/net"
    if not net.is_dir():
        return found
    for iface in sorted(net.iterdir()):
        dev = iface / "device"
        try:
            driver = os.path.basename(os.readlink(dev / "driver"))
            virtio = os.path.basename(os.path.realpath(dev))
        except OSError:
            continue
        if driver == "virtio_net":
            found[iface.name] = virtio
    return found


IRQ_LINE = re.compile(r"^\s*(\d+):.*\s(virtio\d+)-(input|output)\.(\d+)\s*$")


def virtio_irqs(interrupts_text: str, virtio: str, queues: set[int] | None = None) -> list[int]:
    """IRQ numbers of a virtio device's queue vectors ('virtio1-input.0', 'virtio1-output.0', ...), only those
    of the queue pairs in `queues` when given."""
    irqs = []
    for line in interrupts_text.splitlines():
        m = IRQ_LINE.match(line)
        if m and m.group(2) == virtio and (queues is None or int(m.group(4)) in queues):
            irqs.append(int(m.group(1)))
    return irqs


def _queue_index(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def _write(path: Path, value: str) -> str:
    try:
        path.write_text(value + "\n")
        return f"{path} = {value}"
    except OSError as e:
        return f"{path}: cannot set {value}: {e.strerror or e}"


def place(cpu: int, interfaces: list[str] | None = None, proc_root: str = "/proc", sys_root: str = "/sys",
          queues: set[int] | None = None) -> list[str]:
    """Steer the virtio-net queues' IRQs and RPS/XPS to `cpu`; returns what was set (or why not).

    With `queues` (one isostackd instance of several) only those queue pairs are placed: their input and
    output vectors, rx-N/rps_cpus and tx-N/xps_cpus; the other instances place theirs."""
    proc, sysfs = Path(proc_root), Path(sys_root)
    nics = virtio_net_interfaces(sysfs)
    if interfaces:
        missing = [i for i in interfaces if i not in nics]
        nics = {i: v for i, v in nics.items() if i in interfaces}
        out = [f"{i}: not a virtio-net interface, skipped" for i in missing]
    else:
        out = []
    if not nics:
        return out + ["no virtio-net interface found: nothing placed"]
    try:
        interrupts = (proc / "interrupts").read_text()
    except OSError as e:
        interrupts = ""
        out.append(f"cannot read {proc / 'interrupts'}: {e}")
    mask = cpu_mask({cpu})
    for iface, virtio in nics.items():
        irqs = virtio_irqs(interrupts, virtio, queues)
        if not irqs:
            out.append(f"{iface} ({virtio}): no per-queue MSI-X vectors in /proc/interrupts")
        for irq in irqs:
            out.append(_write(proc / "irq" / str(irq) / "smp_affinity_list", str(cpu)))
        qdir = sysfs / "class/net" / iface / "queues"
        for q in sorted(qdir.glob("rx-*")):
            if queues is None or _queue_index(q) in queues:
                out.append(_write(q / "rps_cpus", mask))
        for q in sorted(qdir.glob("tx-*")):
            if queues is None or _queue_index(q) in queues:
                out.append(_write(q / "xps_cpus", mask))
    return out

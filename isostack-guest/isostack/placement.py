"""Where a NIC's protocol processing runs: IRQ affinity, RPS and XPS of virtio-net queues.

* IsoStack (`place`): every queue an isostackd instance owns (IRQs of its input and output vectors, RPS of its
  rx queue, XPS of its tx queue) on the instance's dedicated CPU, so receive processing runs there.
* Legacy (`place_legacy`): the NIC's queue pairs spread round-robin over all vCPUs (queue pair q's vectors
  and XPS on CPU cpus[q % len(cpus)]), RPS off: each queue is processed where its interrupt lands, like a
  stock multi-queue guest.  Undoes an IsoStack placement too.  `--irq-cpus 1` spreads over those vCPUs only
  (one: every queue's interrupt on it), so a benchmark can keep the application on another vCPU, or on that one.

All paths are relative to a proc root and a sys root so that tests can run it against a fake tree.
Both return one human-readable line per file they set (or failed to set), which isostackd / the CLI print.

    python3 -m isostack.placement --legacy [--irq-cpus 1] [--interfaces eth1]
    python3 -m isostack.placement --cpu 1 [--queues 0,1] [--interfaces eth1]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
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


def virtio_queue_irqs(interrupts_text: str, virtio: str) -> list[tuple[int, int]]:
    """[(queue pair, IRQ)] of a virtio device's input and output vectors."""
    out = []
    for line in interrupts_text.splitlines():
        m = IRQ_LINE.match(line)
        if m and m.group(2) == virtio:
            out.append((int(m.group(4)), int(m.group(1))))
    return out


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


def _write_xps(path: Path, value: str) -> str:
    """XPS exists only for multi-queue devices: Linux answers ENOENT to a write on a single-queue device's
    tx-0/xps_cpus (netif_is_multiqueue), which is nothing to place rather than a failure."""
    try:
        path.write_text(value + "\n")
        return f"{path} = {value}"
    except FileNotFoundError:
        return f"{path}: not used (XPS needs more than one tx queue)"
    except OSError as e:
        return f"{path}: cannot set {value}: {e.strerror or e}"


def _select_nics(sysfs: Path, interfaces: list[str] | None) -> tuple[dict[str, str], list[str]]:
    nics = virtio_net_interfaces(sysfs)
    if not interfaces:
        return nics, []
    missing = [i for i in interfaces if i not in nics]
    return {i: v for i, v in nics.items() if i in interfaces}, [f"{i}: not a virtio-net interface, skipped"
                                                                 for i in missing]


def online_cpus(sys_root: str = "/sys") -> set[int]:
    try:
        return parse_cpu_list((Path(sys_root) / "devices/system/cpu/online").read_text())
    except OSError:
        return set(range(os.cpu_count() or 1))


def place_legacy(interfaces: list[str] | None = None, proc_root: str = "/proc", sys_root: str = "/sys",
                 cpus: set[int] | None = None) -> list[str]:
    """The legacy stack's placement: queue pair q's IRQs and XPS on cpus[q % n] (all online vCPUs by
    default), RPS off on every rx queue."""
    proc, sysfs = Path(proc_root), Path(sys_root)
    online = online_cpus(sys_root)
    order = sorted(cpus if cpus is not None else online)
    nics, out = _select_nics(sysfs, interfaces)
    if not nics:
        return out + ["no virtio-net interface found: nothing placed"]
    if not order:
        return out + ["no CPU to place on"]
    offline = sorted(set(order) - online)
    if offline:  # the kernel would refuse the affinity anyway; say why, and move nothing
        return out + [f"cannot place on CPU {format_cpu_list(set(offline))}: not online"
                      f" (online: {format_cpu_list(online) or 'none'})"]
    try:
        interrupts = (proc / "interrupts").read_text()
    except OSError as e:
        interrupts = ""
        out.append(f"cannot read {proc / 'interrupts'}: {e}")
    for iface, virtio in nics.items():
        vectors = virtio_queue_irqs(interrupts, virtio)
        if not vectors:
            out.append(f"{iface} ({virtio}): no per-queue MSI-X vectors in /proc/interrupts")
        for q, irq in vectors:
            out.append(_write(proc / "irq" / str(irq) / "smp_affinity_list", str(order[q % len(order)])))
        qdir = sysfs / "class/net" / iface / "queues"
        for rx in sorted(qdir.glob("rx-*"), key=_queue_index):
            out.append(_write(rx / "rps_cpus", cpu_mask(set())))
        for tx in sorted(qdir.glob("tx-*"), key=_queue_index):
            out.append(_write_xps(tx / "xps_cpus", cpu_mask({order[_queue_index(tx) % len(order)]})))
    return out


def place(cpu: int, interfaces: list[str] | None = None, proc_root: str = "/proc", sys_root: str = "/sys",
          queues: set[int] | None = None) -> list[str]:
    """Steer the virtio-net queues' IRQs and RPS/XPS to `cpu`; returns what was set (or why not).

    With `queues` (one isostackd instance of several) only those queue pairs are placed: their input and
    output vectors, rx-N/rps_cpus and tx-N/xps_cpus; the other instances place theirs."""
    proc, sysfs = Path(proc_root), Path(sys_root)
    nics, out = _select_nics(sysfs, interfaces)
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
                out.append(_write_xps(q / "xps_cpus", mask))
    return out


CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
MAX_CPU = 4095  # Linux's NR_CPUS at most (CONFIG_NR_CPUS); bounds the set a typo like 0-99999999 would build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="isostack.placement", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--legacy", action="store_true", help="spread the queues over all vCPUs (or --irq-cpus), RPS off")
    mode.add_argument("--cpu", type=int, help="put the queues (or --queues) on this CPU (what isostackd does)")
    ap.add_argument("--queues", default="", help="queue pairs for --cpu, e.g. 0,1 (default: all)")
    ap.add_argument("--irq-cpus", default="", help="--legacy: spread over these vCPUs only, e.g. 1 (default: all"
                    " online)")
    ap.add_argument("--interfaces", default="", help="comma-separated NICs (default: every virtio-net one)")
    ap.add_argument("--proc-root", default="/proc")
    ap.add_argument("--sys-root", default="/sys")
    a = ap.parse_args(argv)
    ifaces = [i for i in a.interfaces.split(",") if i] or None
    if a.irq_cpus and not a.legacy:
        ap.error("--irq-cpus goes with --legacy (--cpu places every queue on one CPU already)")
    irq_cpus = None
    if a.irq_cpus:
        if not CPU_LIST.fullmatch(a.irq_cpus) or max(int(n) for n in re.findall(r"\d+", a.irq_cpus)) > MAX_CPU:
            ap.error(f"--irq-cpus: not a list of CPUs 0..{MAX_CPU}: {a.irq_cpus!r} (e.g. 1 or 0,2-3)")
        irq_cpus = parse_cpu_list(a.irq_cpus)
    if a.legacy:
        lines = place_legacy(ifaces, a.proc_root, a.sys_root, cpus=irq_cpus)
    else:
        lines = place(a.cpu, ifaces, a.proc_root, a.sys_root, parse_cpu_list(a.queues) if a.queues else None)
    for line in lines:
        print(line)
    return 1 if any("cannot" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())

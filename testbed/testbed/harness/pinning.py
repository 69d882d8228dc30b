"""Where a case's application and its guest's NIC interrupts run: the playbook's `placement` turned into vCPUs,
the command lines that pin them, and the record's check that the interrupts went there.

Without it the legacy client ran wherever the scheduler put it while the NIC's interrupts sat on vCPU 0, and
its rate doubled or halved with the vCPU it drew: a coin toss per repeat. Both stacks get the same layout:

* `apart` (the default): the data NIC's interrupts (every queue) on the last vCPU, the application on vCPU 0.
  Stack iso: isostackd owns the last vCPU(s) and places its queues there itself; legacy: the placement tool
  with `--irq-cpus <last>`.
* `irq`: the interrupts on the last vCPU and the application there too (stack iso: on isostackd's vCPU; one
  instance only, the playbook refuses several).
* `spread`: the OS default: legacy, the queues spread over all vCPUs (`--legacy`) and the application
  unpinned; stack iso, isostackd as always and the application unpinned.

The server guest of a case gets the legacy layout of the same mode (it serves kernel sockets whatever the stack):
its isoperf server is pinned once it listens, threads and all (`taskset -a -p`); the threads it starts later
inherit that. The native peer gets none. Apart from any I/O: case.py runs the commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from testbed.harness.isostackd_cmd import CLIENT_CPU

APART, IRQ, SPREAD = "apart", "irq", "spread"
APART_MIN_VCPUS = 2  # `apart` needs a vCPU for the application and another for the interrupts


@dataclass(frozen=True)
class GuestPlacement:
    """One guest's layout for a case: where its application and its data NIC's interrupts are meant to run."""

    mode: str
    app_cpus: tuple[int, ...] | None  # None: not pinned, the scheduler's choice
    irq_cpus: tuple[int, ...] | None  # None: spread over all vCPUs by the legacy placement (no one vCPU meant)

    def to_record(self) -> dict:
        return {"placement_mode": self.mode, "app_cpus": _list(self.app_cpus), "irq_cpus": _list(self.irq_cpus)}


def _list(cpus: tuple[int, ...] | None) -> list[int] | None:
    return None if cpus is None else list(cpus)


def legacy(mode: str, vcpus: int, cpu_binding: int | None = None) -> GuestPlacement:
    """A guest on kernel sockets (the legacy client, any server guest); `cpu_binding` is the playbook's `cpu`
    (isoperf --cpu, which comes with `spread`). ValueError when `apart` does not fit the guest."""
    if mode == SPREAD:
        return GuestPlacement(mode, None if cpu_binding is None else (cpu_binding,), None)
    if mode == APART and vcpus < APART_MIN_VCPUS:
        raise ValueError(f"placement 'apart' needs {APART_MIN_VCPUS} vCPUs (the application on one, the NIC's"
                         f" interrupts on another); the guest has {vcpus}")
    last = vcpus - 1
    return GuestPlacement(mode, (CLIENT_CPU,) if mode == APART else (last,), (last,))


def iso(mode: str, isostackd_cpus: tuple[int, ...], cpu_binding: int | None = None) -> GuestPlacement:
    """The client guest of a stack-iso case: isostackd's instances own `isostackd_cpus` and their queues'
    interrupts; the application goes on vCPU 0 (`apart`), on the one instance's vCPU (`irq`) or anywhere."""
    if mode == APART:
        return GuestPlacement(mode, (CLIENT_CPU,), isostackd_cpus)
    if mode == IRQ:
        if len(isostackd_cpus) != 1:
            raise ValueError(f"placement 'irq' needs one isostackd instance, the case has {len(isostackd_cpus)}")
        return GuestPlacement(mode, isostackd_cpus, isostackd_cpus)
    return GuestPlacement(mode, None if cpu_binding is None else (cpu_binding,), isostackd_cpus)


def cpu_list(cpus: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cpus)


def pinned(command: str, cpus: tuple[int, ...] | None) -> str:
    """`taskset -c C env <command>`: the whole process (every thread it starts) on `cpus`; unchanged when None.
    `command` starts with VAR=value assignments (GuestLayout.module_command), hence `env`."""
    return command if cpus is None else f"taskset -c {cpu_list(cpus)} env {command}"


def pin_running_command(pid: int, cpus: tuple[int, ...]) -> str:
    """Pin a running process and all its threads; the threads and children it starts later inherit it."""
    return f"taskset -a -p -c {cpu_list(cpus)} {int(pid)}"


# ---------------------------------------------------------------- as applied, as measured


def _parse_cpus(text: str) -> set[int] | None:
    """'0-2,5' -> {0, 1, 2, 5}; None when it is not a CPU list (a guest's text is not trusted)."""
    if not re.fullmatch(r"\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*", text or ""):
        return None
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


MOVE_GRACE = 1  # interrupts per vector allowed on the old vCPU: x86 moves an MSI vector when it next fires


def check(intended: tuple[int, ...] | None, layout: dict | None, interrupts: dict | None) -> dict:
    """Where the NIC's queue interrupts were set to go (the affinities of the layout snapshot before the run),
    where they went (vCPUs whose count grew during the run, and how many of them went elsewhere than
    `intended`), and whether that is the placement asked for: every affinity within `intended` and at most
    MOVE_GRACE interrupts per vector elsewhere (the first one after a change still reaches the old vCPU: seen in
    the guests, 1 of 166). None: nothing to judge (spread on purpose, or no queue IRQs seen)."""
    applied: set[int] = set()
    unreadable = False  # an affinity that is not a CPU list: never as intended
    irqs = ((layout or {}).get("irqs") or {}).values()
    for irq in irqs:
        cpus = _parse_cpus(str(irq.get("affinity", ""))) if isinstance(irq, dict) else None
        unreadable |= cpus is None
        applied |= cpus or set()
    measured: set[int] = set()
    counted, elsewhere, stray_vector = 0, 0, False
    for counts in (interrupts or {}).values():
        off = 0
        for cpu, n in enumerate(counts if isinstance(counts, list) else []):
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                measured.add(cpu)
                counted += n
                off += n if intended is not None and cpu not in intended else 0
        elsewhere += off
        stray_vector |= off > MOVE_GRACE
    ok = None
    if intended is not None and irqs:
        ok = not unreadable and applied <= set(intended) and not stray_vector
    return {"irq_cpus_applied": sorted(applied), "irq_cpus_measured": sorted(measured), "irqs_counted": counted,
            "irqs_elsewhere": elsewhere if intended is not None else None, "irqs_as_intended": ok}

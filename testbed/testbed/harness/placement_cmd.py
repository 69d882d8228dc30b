"""isostackd instances and NIC placement in a guest: the plan, the command lines, the parse of what they print.

* Instances (stack iso, playbook key `instances: N`): the isoperf client runs on vCPU 0 and isostackd instance K
  on vCPU `vcpus - N + K` (the last N vCPUs), owning queue pairs K, K + N, K + 2N, ... of the data NIC
  (`isostackd --instance K --cpu C --queues ..`); isostackd itself puts its queues' IRQs, RPS and XPS on its
  vCPU.  One instance keeps isostackd's default (all queues) and the last vCPU.  N instances need N + 1 vCPUs
  and N queue pairs in the client guest (`testbed up --vcpus N+1 --queues N`).
* Legacy placement (`python3 -m isostack.placement --legacy [--irq-cpus C]`): the queue pairs' IRQs and XPS
  spread over all vCPUs (or over C only: the playbook's `placement`, see pinning.py), RPS off; the harness
  applies it on the server guest for every case and on the client for legacy cases (an earlier iso case's
  placement would otherwise stay).
* Layout snapshot: the data NIC's queue IRQs with their affinity and per-CPU interrupt counts, rps_cpus and
  xps_cpus, read before and after the client runs, so a result says where the NIC's interrupts went.

Apart from any I/O, so both sides are tested on canned text.
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import asdict, dataclass

from testbed.harness.guestcmd import GuestLayout
from testbed.harness.isostackd_cmd import CLIENT_CPU, INTERFACES, SOCKET

DATA_INTERFACE = INTERFACES  # the guests' vhost-user data NIC (eth1 is the management NIC)
SOCKET_BASE = SOCKET  # instance K > 0: /run/isostack/isostackd-K.sock


@dataclass(frozen=True)
class InstancePlan:
    instance: int
    cpu: int
    queues: tuple[int, ...] | None  # None: all of the NIC's queue pairs (one instance)
    socket: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["queues"] = "all" if self.queues is None else list(self.queues)
        return d


def socket_path(instance: int) -> str:
    """isostack.attach.instance_path(SOCKET_BASE, K): where the front-end discovers instance K."""
    if instance == 0:
        return SOCKET_BASE
    stem, suffix = SOCKET_BASE.rsplit(".", 1)
    return f"{stem}-{instance}.{suffix}"


def needs(instances: int) -> tuple[int, int]:
    """(vCPUs, queue pairs) the client guest needs for `instances` isostackd instances."""
    return instances + 1, instances if instances > 1 else 1


def plan(instances: int, vcpus: int, queue_pairs: int) -> list[InstancePlan]:
    """Where each instance runs and which queue pairs it owns; ValueError when the guest is too small."""
    want_cpus, want_queues = needs(instances)
    if vcpus < want_cpus or queue_pairs < want_queues:
        raise ValueError(
            f"{instances} isostackd instance(s) need {want_cpus} vCPUs (vCPU {CLIENT_CPU} for the client, one per"
            f" instance) and {want_queues} NIC queue pair(s) (one or more per instance); the guest has {vcpus}"
            f" vCPU(s) and {queue_pairs} queue pair(s)"
        )
    if instances == 1:
        return [InstancePlan(0, vcpus - 1, None, socket_path(0))]
    first = vcpus - instances
    return [
        InstancePlan(k, first + k, tuple(range(k, queue_pairs, instances)), socket_path(k))
        for k in range(instances)
    ]


def testbed_flags(instances: int, vcpus: int, queue_pairs: int) -> str:
    """The `testbed up` flags that give a testbed enough vCPUs and queue pairs for `instances`."""
    want_cpus, want_queues = needs(instances)
    return f"--vcpus {max(want_cpus, vcpus)} --queues {max(want_queues, queue_pairs)}"


# ---------------------------------------------------------------- isostackd's log


def parse_stats(log_text: str) -> dict | None:
    """isostackd's counters from its last "stats: {...}" log line (written at exit and on SIGUSR1), or None."""
    for line in reversed(log_text.splitlines()):
        at = line.find(" stats: {")
        if at < 0:
            continue
        try:
            value = ast.literal_eval(line[at + len(" stats: "):].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        return value if isinstance(value, dict) else None
    return None


def placement_lines(log_text: str) -> list[str]:
    """What isostackd placed ("placement: /proc/irq/29/smp_affinity_list = 1", ...)."""
    out = []
    for line in log_text.splitlines():
        at = line.find(" placement: ")
        if at >= 0:
            out.append(line[at + len(" placement: "):].strip())
    return out


# ---------------------------------------------------------------- legacy placement and the layout snapshot


def legacy_command(layout: GuestLayout, interface: str = DATA_INTERFACE,
                   irq_cpus: tuple[int, ...] | None = None) -> str:
    """The legacy placement; with `irq_cpus` every queue's interrupt on those vCPUs only (pinning: apart, irq)."""
    only = f" --irq-cpus {','.join(str(c) for c in irq_cpus)}" if irq_cpus else ""
    return f"{layout.placement()} --legacy{only} --interfaces {shlex.quote(interface)}"


def snapshot_command(interface: str = DATA_INTERFACE) -> str:
    """Print the NIC's queue layout: `irq NAME N AFFINITY COUNTS` (counts per CPU, comma-separated),
    `rps rx-Q MASK`, `xps tx-Q MASK` (dash and mawk are enough: it runs in the minimal guests)."""
    i = shlex.quote(interface)
    return (
        f'v=$(basename "$(readlink -f /sys/class/net/{i}/device)");'
        " awk -v v=\"$v\" '$NF ~ (\"^\" v \"-(input|output)[.][0-9]+$\") {n=$1; sub(\":\", \"\", n); c=\"\";"
        " for (k=2; k<NF; k++) { if ($k !~ /^[0-9]+$/) break; c=c (c==\"\" ? \"\" : \",\") $k }; print n, $NF, c}'"
        " /proc/interrupts | while read n name c; do echo \"irq $name $n $(cat /proc/irq/$n/smp_affinity_list) $c\";"
        f" done; for q in /sys/class/net/{i}/queues/rx-*; do echo \"rps $(basename $q) $(cat $q/rps_cpus)\"; done;"
        f" for q in /sys/class/net/{i}/queues/tx-*; do echo \"xps $(basename $q) $(cat $q/xps_cpus 2>/dev/null"
        " || echo -)\"; done"
    )


def parse_snapshot(text: str) -> dict:
    """{"irqs": {name: {"irq", "affinity", "counts"}}, "rps_cpus": {rx-Q: mask}, "xps_cpus": {tx-Q: mask}}."""
    out: dict = {"irqs": {}, "rps_cpus": {}, "xps_cpus": {}}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "irq" and parts[2].isdigit():
            counts = parts[4] if len(parts) > 4 else ""
            out["irqs"][parts[1]] = {
                "irq": int(parts[2]),
                "affinity": parts[3],
                "counts": [int(c) for c in counts.split(",") if c.isdigit()],
            }
        elif len(parts) == 3 and parts[0] in ("rps", "xps"):
            out[f"{parts[0]}_cpus"][parts[1]] = parts[2]
    return out


def interrupts_delta(before: dict, after: dict) -> dict[str, list[int]]:
    """Interrupts per CPU of each queue vector between two snapshots: where the NIC's interrupts landed."""
    out = {}
    for name, a in (after.get("irqs") or {}).items():
        b = (before.get("irqs") or {}).get(name)
        if b and len(b["counts"]) == len(a["counts"]):
            out[name] = [x - y for x, y in zip(a["counts"], b["counts"], strict=True)]
    return out


def summary(layout: dict) -> str:
    """One phrase: "input.0→1 output.0→1 input.1→2 output.1→2, RPS rx-0=2 rx-1=4"."""
    irqs = " ".join(f"{name.split('-', 1)[-1]}→{v['affinity']}" for name, v in (layout.get("irqs") or {}).items())
    rps = " ".join(f"{q}={m}" for q, m in (layout.get("rps_cpus") or {}).items())
    return f"{irqs or 'no queue IRQs'}, RPS {rps or '-'}"

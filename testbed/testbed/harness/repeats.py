"""A run's cases over their repeats: each case's figures per repeat, their statistics (stats) and suspect
marks (suspects), and the paired repeats behind each "× legacy" interval.

A case here is a (test, size, connections, stack label) of the run; its repeats are the records sharing it.
The bootstrap settings come from run.json's `statistics` (runs stored before it get a fixed seed, so their
report is the same every time too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from testbed.harness import results, stats, suspects

DEFAULT_SEED = 0  # runs stored before the seed was recorded

CaseKey = tuple  # (test_name, size, connections, stack label)


class Figures(NamedTuple):
    """A successful repeat's figures of merit: messages/s, messages per consumed CPU-second of the client guest
    (its busy share of all vCPUs from /proc/stat, times the vCPUs), the client's retransmitted share (%) and
    messages per host CPU-second of the client guest's vCPU threads (host_cpu)."""

    repeat: int | None
    mps: float
    per_cpu: float | None
    retrans: float | None
    per_host_cpu: float | None = None


def key(case: dict) -> CaseKey:
    return (case.get("test_name"), case.get("size"), case.get("connections"), results.stack_column(case))


def measured_role(case: dict) -> str:
    """The role of the guest under test, whose cost counts: the client, or the server when the client is the
    native peer (peer -> guest: the guest receives)."""
    return "server" if case.get("client") == "peer" else "client"


def figures(case: dict, vcpus: dict) -> Figures | None:
    """The repeat's Figures, or None for a failed repeat or one without messages/s."""
    r = case.get("isoperf") or {}
    mps = r.get("messages_per_s")
    role = measured_role(case)
    busy = ((r.get("cpu") or {}).get(role) or {}).get("all")
    if case.get("error") or not isinstance(mps, (int, float)) or mps <= 0:
        return None
    n = vcpus.get(case.get(role)) or 1
    per_cpu = mps / (busy / 100 * n) if isinstance(busy, (int, float)) and busy > 0 else None
    retrans = ((case.get("tcp") or {}).get("client") or {}).get("retrans_pct")
    per_host = (case.get("host_cpu") or {}).get(f"{measured_role(case)}_messages_per_host_cpu_s")
    return Figures(case.get("repeat"), mps, per_cpu, retrans if isinstance(retrans, (int, float)) else None,
                   per_host if isinstance(per_host, (int, float)) and per_host > 0 else None)


def vcpus_of(run: dict) -> dict:
    return {g.get("name"): g.get("vcpus") for g in (run.get("topology") or {}).get("guests", [])}


def host_cpus(run: dict) -> int | None:
    n = (run.get("metadata") or {}).get("host_cpu_count")
    return n if isinstance(n, int) and n > 0 else None


def settings(run: dict) -> tuple[int, int, float]:
    """(seed, resamples, confidence) of the bootstrap, from run.json's `statistics`."""
    st = run.get("statistics") or {}
    seed = st.get("seed")
    return (seed if isinstance(seed, int) else DEFAULT_SEED, int(st.get("resamples") or stats.RESAMPLES),
            float(st.get("confidence") or stats.CONFIDENCE))


def groups(run: dict) -> dict[CaseKey, list[dict]]:
    """Every record of the run under its case, in the order they ran (cross-checks stay in their records)."""
    out: dict[CaseKey, list[dict]] = {}
    for c in run.get("cases", []):
        out.setdefault(key(c), []).append(c)
    return out


@dataclass(frozen=True)
class CaseStatistics:
    """One case over its repeats: how many ran and failed, its statistics and its suspect marks."""

    key: CaseKey
    records: list[dict]
    ok: list[Figures]
    messages_per_s: stats.Summary | None
    per_cpu: stats.Summary | None
    marks: list[str]
    per_host_cpu: stats.Summary | None = None  # messages per host CPU-second of the client guest's vCPU threads

    @property
    def failed(self) -> int:
        return len(self.records) - len(self.ok)

    def to_dict(self) -> dict:
        test, size, conns, stack = self.key
        return {"test_name": test, "size": size, "connections": conns, "stack": stack, "runs": len(self.ok),
                "failed": self.failed,
                "messages_per_s": self.messages_per_s.to_dict() if self.messages_per_s else None,
                "messages_per_cpu_s": self.per_cpu.to_dict() if self.per_cpu else None,
                "messages_per_host_cpu_s": self.per_host_cpu.to_dict() if self.per_host_cpu else None,
                "suspect": self.marks}


def case_statistics(run: dict) -> list[CaseStatistics]:
    """Every case of the run with its statistics over the repeats that succeeded."""
    seed, resamples, confidence = settings(run)
    vcpus, cpus = vcpus_of(run), host_cpus(run)
    out = []
    for k, records in groups(run).items():
        ok = [f for f in (figures(c, vcpus) for c in records) if f is not None]
        per_cpu = [f.per_cpu for f in ok if f.per_cpu is not None]
        per_host = [f.per_host_cpu for f in ok if f.per_host_cpu is not None]
        out.append(CaseStatistics(
            key=k, records=records, ok=ok,
            messages_per_s=stats.summarize([f.mps for f in ok], seed, resamples, confidence),
            per_cpu=stats.summarize(per_cpu, seed, resamples, confidence),
            marks=suspects.group_marks(records, cpus),
            per_host_cpu=stats.summarize(per_host, seed, resamples, confidence)))
    return out


def paired(case: list[Figures], base: list[Figures], figure: str) -> list[tuple[float, float]]:
    """(case, base) values of the repeats both ran with the same repeat number (the same round when
    interleaved); where the repeat numbers do not match, pairs in the order they ran."""
    def values(items: list[Figures]) -> list[tuple]:
        return [(f.repeat, getattr(f, figure)) for f in items if getattr(f, figure) is not None]

    a, b = values(case), values(base)
    b_by_repeat = dict(b)
    if all(r is not None for r, _ in a) and any(r in b_by_repeat for r, _ in a):
        return [(v, b_by_repeat[r]) for r, v in a if r in b_by_repeat]
    return [(va, vb) for (_, va), (_, vb) in zip(a, b, strict=False)]


def ratio_interval(run: dict, case: list[Figures], base: list[Figures], figure: str) -> stats.Interval | None:
    """The bootstrap interval of median(case) / median(base) for `figure` ("mps", "per_cpu", "per_host_cpu")."""
    seed, resamples, confidence = settings(run)
    return stats.ratio_interval(paired(case, base, figure), seed, resamples, confidence)

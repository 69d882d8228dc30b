"""Two runs side by side: match their cases, and per figure of merit say whether NEW regressed from BASE.

Cases match by the key the report groups repeats on (repeats.key: test name, size, connections, stack
label). Per case and metric the change is median(NEW) / median(BASE) over the repeats that succeeded, with a
bootstrap interval of that ratio. A **regression** needs both, as asv and pyperf decide it:

- *beyond the threshold*: the whole interval of the change lies beyond it (e.g. below 0.9 for a 10 % drop
  of a higher-is-better figure), so a large but uncertain change is not called one; and
- *significant*: the exact one-sided Mann–Whitney p-value (significance.p_less) is at most `alpha`.

With 3 repeats a side both hold only when every NEW repeat is more than the threshold below every BASE
repeat, the smallest evidence that is not a guess; with fewer repeats the verdict is "not enough repeats".
Improvements are the mirror image.

On a shared host the throughput and the latency follow the host's load: two runs of the same commit at load
averages 40 and 20 on 2 CPUs (TCG) differed by 2-30x in msgs/s, and `fab compare` called 25 "improvements".
Where a case's host load (the 1-minute load average, mean of its repeats' ends) differs between BASE and NEW
by more than suspects.LOAD_MOVED_PER_CPU per host CPU, a verdict on a metric that follows the load (msgs/s,
msgs/CPU-s, latencies) is "host load differs" instead of a regression or an improvement: such a change says
more about the host than about the code. msgs/host-CPU-s (messages per CPU-second the guest actually got)
keeps its verdict. Pure: run.json dicts in, a Comparison out (comparing.py does the I/O).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from testbed.harness import repeats, significance, suspects
from testbed.harness.stats import Interval

REGRESSION = "regression"
IMPROVEMENT = "improvement"
UNCHANGED = "unchanged"  # no change beyond the threshold that is significant, and the median within it
UNSURE = "unsure"  # the medians differ by more than the threshold, but not significantly
NOT_ENOUGH = "not enough repeats"
FAILED_IN_NEW = "failed in NEW"  # every repeat failed in NEW but some ran in BASE: counted as a regression
FAILED_IN_BASE = "failed in BASE"
LOAD_DIFFERS = "host load differs"  # beyond the threshold, but the host's load differed between the runs

VERDICT_TEXT = {
    REGRESSION: "worse beyond the threshold (the whole interval) and significant (Mann–Whitney p <= alpha)",
    IMPROVEMENT: "better beyond the threshold (the whole interval) and significant",
    UNCHANGED: "no significant change beyond the threshold",
    UNSURE: "the medians differ by more than the threshold, but the repeats do not show it for sure",
    NOT_ENOUGH: "fewer successful repeats than --min-repeats on a side: no verdict",
    FAILED_IN_NEW: "every repeat failed in NEW (some ran in BASE): counted as a regression",
    FAILED_IN_BASE: "every repeat failed in BASE: nothing to compare with",
    LOAD_DIFFERS: "would be a regression or an improvement, but the host's load average differed between the runs "
                  f"by more than {suspects.LOAD_MOVED_PER_CPU} per host CPU: a figure that follows the load "
                  "(msgs/s, msgs/CPU-s, latency) is not judged; rerun both on a quiet host",
}


@dataclass(frozen=True)
class Metric:
    """A figure of merit per successful repeat; `higher_is_better` says which way is a regression."""

    name: str
    label: str
    higher_is_better: bool
    value: Callable[[dict, repeats.Figures], float | None]
    follows_load: bool = True  # moves with the host's load (see the module's docstring)


def _latency(pct: str) -> Callable[[dict, repeats.Figures], float | None]:
    def value(case: dict, _: repeats.Figures) -> float | None:
        v = ((case.get("isoperf") or {}).get("latency_us") or {}).get(pct)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
    return value


METRICS = (
    Metric("messages_per_s", "msgs/s", True, lambda _, f: f.mps),
    Metric("messages_per_cpu_s", "msgs/CPU-s", True, lambda _, f: f.per_cpu),
    Metric("messages_per_host_cpu_s", "msgs/host-CPU-s", True, lambda _, f: f.per_host_cpu, follows_load=False),
    Metric("latency_p50_us", "p50 latency µs", False, _latency("p50")),
    Metric("latency_p99_us", "p99 latency µs", False, _latency("p99")),
)


@dataclass(frozen=True)
class Settings:
    """What counts as a regression: `threshold` (0.10: a 10 % change), the significance level `alpha`, the
    fewest successful repeats a side (`min_repeats`), and the bootstrap's seed, resamples and confidence."""

    threshold: float = 0.10
    alpha: float = 0.05
    min_repeats: int = 3
    seed: int = 0
    resamples: int = 2000
    confidence: float = 0.95

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1 (a share: 0.1 is 10 %), not {self.threshold}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha}")
        if self.min_repeats < 2:
            raise ValueError(f"min_repeats must be at least 2, not {self.min_repeats}")


@dataclass(frozen=True)
class MetricChange:
    """One metric of one matched case: both runs' values, the change NEW/BASE, its interval and the verdict."""

    key: tuple
    metric: Metric
    base: list[float]
    new: list[float]
    change: float  # median(new) / median(base)
    interval: Interval | None
    p_worse: float | None  # one-sided Mann–Whitney: NEW worse than BASE
    p_better: float | None
    verdict: str

    @property
    def base_median(self) -> float:
        return float(np.median(self.base))

    @property
    def new_median(self) -> float:
        return float(np.median(self.new))

    def to_dict(self) -> dict:
        return {"case": key_dict(self.key), "metric": self.metric.name, "label": self.metric.label,
                "higher_is_better": self.metric.higher_is_better, "base": self.base, "new": self.new,
                "base_median": self.base_median, "new_median": self.new_median, "change": self.change,
                "ci_low": self.interval.low if self.interval else None,
                "ci_high": self.interval.high if self.interval else None,
                "p_worse": self.p_worse, "p_better": self.p_better, "verdict": self.verdict}


@dataclass(frozen=True)
class CaseMatch:
    """A case of either run: its successful and failed repeats on each side (0/0 where it did not run)."""

    key: tuple
    base_ok: int
    base_failed: int
    new_ok: int
    new_failed: int
    verdict: str | None = None  # FAILED_IN_NEW / FAILED_IN_BASE; None when the metrics carry the verdicts

    @property
    def in_base(self) -> bool:
        return self.base_ok + self.base_failed > 0

    @property
    def in_new(self) -> bool:
        return self.new_ok + self.new_failed > 0

    def to_dict(self) -> dict:
        return {"case": key_dict(self.key), "base_ok": self.base_ok, "base_failed": self.base_failed,
                "new_ok": self.new_ok, "new_failed": self.new_failed, "verdict": self.verdict}


@dataclass
class Comparison:
    base_id: str
    new_id: str
    settings: Settings
    cases: list[CaseMatch] = field(default_factory=list)
    changes: list[MetricChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def only_base(self) -> list[CaseMatch]:
        return [c for c in self.cases if not c.in_new]

    @property
    def only_new(self) -> list[CaseMatch]:
        return [c for c in self.cases if not c.in_base]

    @property
    def regressions(self) -> list[MetricChange]:
        return [m for m in self.changes if m.verdict == REGRESSION]

    @property
    def improvements(self) -> list[MetricChange]:
        return [m for m in self.changes if m.verdict == IMPROVEMENT]

    @property
    def failed_in_new(self) -> list[CaseMatch]:
        return [c for c in self.cases if c.verdict == FAILED_IN_NEW]

    @property
    def regressed(self) -> bool:
        """What makes `fab compare` exit non-zero: a regression, or a case that no longer runs at all."""
        return bool(self.regressions or self.failed_in_new)

    def to_dict(self) -> dict:
        s = self.settings
        return {"format": 1, "base": self.base_id, "new": self.new_id,
                "settings": {"threshold": s.threshold, "alpha": s.alpha, "min_repeats": s.min_repeats,
                             "seed": s.seed, "resamples": s.resamples, "confidence": s.confidence},
                "regressed": self.regressed, "regressions": len(self.regressions),
                "improvements": len(self.improvements), "warnings": self.warnings,
                "cases": [c.to_dict() for c in self.cases], "changes": [m.to_dict() for m in self.changes]}


def key_dict(key: tuple) -> dict:
    """A case key as named fields (repeats.key's first four; any further ones as `extra`)."""
    test, size, conns, stack, *extra = (*key, None, None, None, None)[: max(4, len(key))]
    out = {"test_name": test, "size": size, "connections": conns, "stack": stack}
    if extra:
        out["extra"] = list(extra)
    return out


def case_label(key: tuple) -> str:
    test, size, conns, stack, *extra = (*key, None, None, None, None)[: max(4, len(key))]
    return " ".join([f"{test} size={size} conns={conns} {stack}", *map(str, extra)]).strip()


EPS = 1e-12  # the exact p-value of 3 repeats against 3 is 1/20, alpha 0.05 itself, computed as a quotient


def _beyond(value: float, line: float, up: bool) -> bool:
    return value > line if up else value < line


def _verdict(metric: Metric, base: list[float], new: list[float], change: float, interval: Interval | None,
             p_worse: float | None, p_better: float | None, s: Settings) -> str:
    if len(base) < s.min_repeats or len(new) < s.min_repeats:
        return NOT_ENOUGH
    worse_up = not metric.higher_is_better  # latency: worse is up; messages/s: worse is down
    worse_line = 1 + s.threshold if worse_up else 1 - s.threshold
    better_line = 1 - s.threshold if worse_up else 1 + s.threshold

    def whole_interval_beyond(line: float, up: bool) -> bool:
        return interval is not None and _beyond(interval.low if up else interval.high, line, up)

    if p_worse is not None and p_worse <= s.alpha + EPS and whole_interval_beyond(worse_line, worse_up):
        return REGRESSION
    if p_better is not None and p_better <= s.alpha + EPS and whole_interval_beyond(better_line, not worse_up):
        return IMPROVEMENT
    if _beyond(change, worse_line, worse_up) or _beyond(change, better_line, not worse_up):
        return UNSURE
    return UNCHANGED


def host_load(records: list[dict]) -> float | None:
    """A case's host load: the median over its repeats of the mean 1-minute load average at its two ends."""
    loads = []
    for c in records:
        ends = [((c.get("host_load") or {}).get(side) or {}).get("1m") for side in ("before", "after")]
        ends = [e for e in ends if isinstance(e, (int, float)) and not isinstance(e, bool)]
        if ends:
            loads.append(sum(ends) / len(ends))
    return float(np.median(loads)) if loads else None


def _load_differs(base: list[dict], new: list[dict], cpus: int | None) -> bool:
    b, n = host_load(base), host_load(new)
    limit = suspects.LOAD_MOVED_PER_CPU * (cpus or suspects.DEFAULT_CPUS)
    return b is not None and n is not None and abs(n - b) > limit


def _values(records: list[dict], vcpus: dict) -> list[tuple[dict, repeats.Figures]]:
    return [(c, f) for c in records if (f := repeats.figures(c, vcpus)) is not None]


def _metadata_warnings(base: dict, new: dict) -> list[str]:
    """Where the two runs were not measured alike: the figures may differ for that reason alone."""
    out = []
    bm, nm = base.get("metadata") or {}, new.get("metadata") or {}
    for name, what in (("accel", "accel"), ("host_cpu_model", "CPU model"), ("host_cpu_count", "host CPUs"),
                       ("device_model_datapath", "device-model datapath")):
        if bm.get(name) != nm.get(name):
            out.append(f"{what} differs: BASE {bm.get(name)}, NEW {nm.get(name)}")
    bp, np_ = (base.get("playbook") or {}), (new.get("playbook") or {})
    if bp.get("name") != np_.get("name"):
        out.append(f"playbook differs: BASE {bp.get('name')}, NEW {np_.get('name')}")
    elif bp.get("sha256") != np_.get("sha256"):
        out.append(f"playbook {np_.get('name')} was edited between the runs (its sha256 differs)")
    for run, side in ((base, "BASE"), (new, "NEW")):
        if not run.get("ended_at"):
            out.append(f"{side} ({run.get('run_id')}) is incomplete: it was interrupted or is still running")
    return out


def _settings_warnings(key: tuple, base: list[dict], new: list[dict]) -> list[str]:
    """A matched case whose duration, warm-up or verification changed measures something else."""
    out = []
    for name in ("duration", "warmup", "verify", "response_size", "intervals", "sndbuf"):
        b, n = {c.get(name) for c in base}, {c.get(name) for c in new}
        if b != n:
            out.append(f"{case_label(key)}: {name} differs: BASE {sorted(b, key=str)}, NEW {sorted(n, key=str)}")
    return out


def compare(base: dict, new: dict, settings: Settings | None = None) -> Comparison:
    """Match the two runs' cases and judge every metric both have values of (see the module's docstring)."""
    s = settings or Settings()
    result = Comparison(str(base.get("run_id")), str(new.get("run_id")), s, warnings=_metadata_warnings(base, new))
    bgroups, ngroups = repeats.groups(base), repeats.groups(new)
    bvcpus, nvcpus = repeats.vcpus_of(base), repeats.vcpus_of(new)
    keys = list(bgroups) + [k for k in ngroups if k not in bgroups]
    cpus = (new.get("metadata") or {}).get("host_cpu_count") or (base.get("metadata") or {}).get("host_cpu_count")
    load_cases = []
    for index, key in enumerate(keys):
        brec, nrec = bgroups.get(key, []), ngroups.get(key, [])
        bvals, nvals = _values(brec, bvcpus), _values(nrec, nvcpus)
        verdict = None
        if brec and nrec:
            if not nvals and bvals:
                verdict = FAILED_IN_NEW
            elif not bvals:
                verdict = FAILED_IN_BASE
            result.warnings += _settings_warnings(key, brec, nrec)
        result.cases.append(CaseMatch(key, len(bvals), len(brec) - len(bvals), len(nvals), len(nrec) - len(nvals),
                                      verdict))
        if not (bvals and nvals):
            continue
        load_differs = _load_differs(brec, nrec, cpus if isinstance(cpus, int) else None)
        for metric in METRICS:
            b = [v for c, f in bvals if (v := metric.value(c, f)) is not None]
            n = [v for c, f in nvals if (v := metric.value(c, f)) is not None]
            if not b or not n:
                continue
            change = float(np.median(n) / np.median(b))
            interval = significance.ratio_of_medians_interval(n, b, s.seed + index, s.resamples, s.confidence)
            p_lower, p_higher = significance.p_less(n, b), significance.p_less(b, n)
            p_worse, p_better = (p_lower, p_higher) if metric.higher_is_better else (p_higher, p_lower)
            verdict = _verdict(metric, b, n, change, interval, p_worse, p_better, s)
            if load_differs and metric.follows_load and verdict in (REGRESSION, IMPROVEMENT):
                verdict = LOAD_DIFFERS
                if key not in load_cases:
                    load_cases.append(key)
            result.changes.append(MetricChange(key, metric, b, n, change, interval, p_worse, p_better, verdict))
    if load_cases:
        result.warnings.append(
            f"the host's load average differed between the runs in {len(load_cases)} case(s) (by more than "
            f"{suspects.LOAD_MOVED_PER_CPU} per host CPU): their msgs/s, msgs/CPU-s and latencies are not judged "
            f"({LOAD_DIFFERS}); msgs/host-CPU-s is")
    return result

"""A run's figures in the seed's style (IsoStack, ATC 2010): bars of throughput per stack with the client's CPU
as lines on a second axis, the messages per host CPU-second as a multiple of legacy, and the request/response
latency percentiles and CDFs (from isoperf's log histogram); each as PNG and SVG in <run>/figures/.

Every bar is the median over a case's repeats with the bootstrap 95 % interval of that median (stats, the seed
of run.json) as its error bar, so a figure says as much as the Repeats table. plots() turns a run into plain
data (Plot); render() draws one with matplotlib, imported there and not at module import, so importing the
harness stays light and needs no display (the Agg canvas draws into files).
"""

from __future__ import annotations

import math
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from testbed.harness import repeats, results, stats

FIGURES_DIR = "figures"
FORMATS = ("png", "svg")
THROUGHPUT_TESTS = ("stream", "maerts")
LATENCY_TESTS = ("rr", "crr")
PERCENTILES = ("p50", "p90", "p99")
AXES = ("size", "connections")

# The seed's figures: legacy grey, IsoStack in colour; other stack labels take the next colour of the cycle.
_COLOURS = {"legacy": "#8c8c8c", "iso": "#1f77b4", "iso+locks": "#ff7f0e", "iso×2": "#2ca02c",
            "iso×2+locks": "#d62728"}
_CYCLE = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_HATCHES = ("", "//", "..", "xx", "\\\\", "oo")


class FiguresError(RuntimeError):
    """The figures cannot be drawn at all (matplotlib missing); the run and its tables are unaffected."""


@dataclass(frozen=True)
class Value:
    """A figure over a case's repeats: the median and its bootstrap interval (None with one repeat)."""

    median: float
    low: float | None = None
    high: float | None = None
    n: int = 1


@dataclass
class Series:
    """One stack (and, where a second variable varies, one value of it): its value per x category."""

    label: str
    stack: str
    values: dict = field(default_factory=dict)  # x -> Value
    cpu: dict = field(default_factory=dict)  # x -> Value: the client's CPU, % of one core
    variant: int = 0  # which value of the second variable, or which percentile: the bar's hatch


@dataclass
class Plot:
    """What one figure shows, without matplotlib: categories on x, a bar per series and category."""

    name: str  # file name without extension
    title: str
    xlabel: str
    ylabel: str
    xs: list
    series: list[Series]
    cpu_label: str | None = None  # the second axis, when the series carry CPU
    baseline: float | None = None  # a dotted line (1: legacy in the ratio figure)
    log: bool = False
    bar_labels: str | None = None  # format of a label on each bar ("{:.1f}×")
    note: str | None = None  # a line under the title


def _summary(run: dict, values: list[float]) -> Value | None:
    s = stats.summarize(values, *repeats.settings(run))
    if s is None:
        return None
    low, high = (s.interval.low, s.interval.high) if s.interval else (None, None)
    return Value(s.median, low, high, s.n)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def client_cpu(case: dict, vcpus: dict, host_cpus: int | None) -> tuple[float | None, str | None]:
    """The CPU of the guest under test (the client, or the receiving server when the client is the native
    peer: repeats.measured_role) over the run as % of one core, and where it was counted: "host" (its vCPU
    threads on the host, host_cpu) where recorded, else "guest" (its /proc/stat busy share of all vCPUs times
    the vCPUs)."""
    role = repeats.measured_role(case)
    hc = case.get("host_cpu") or {}
    guest = ((hc.get("guests") or {}).get(case.get(role)) or {}) if isinstance(hc, dict) else {}
    pct = _number(guest.get("vcpu_pct")) if isinstance(guest, dict) else None
    if pct is not None:
        return pct, "host"
    busy = _number((((case.get("isoperf") or {}).get("cpu") or {}).get(role) or {}).get("all"))
    if busy is None:
        return None, None
    return busy * (vcpus.get(case.get(role)) or host_cpus or 1), "guest"


def _measured_name(cases: list[dict]) -> str:
    """What the CPU of a figure is: the client's, or the receiving guest's (peer -> guest)."""
    roles = {repeats.measured_role(c) for c in cases}
    return "receiving guest" if roles == {"server"} else "client" if roles == {"client"} else "guest under test"


def _ok(run: dict, cases: list[dict]) -> list[dict]:
    """The repeats that count (as in the tables: succeeded, with messages/s) and have an integer size and
    connection count to place them on an axis."""
    vcpus = repeats.vcpus_of(run)
    return [c for c in cases if repeats.figures(c, vcpus) is not None
            and all(isinstance(c.get(a), int) and not isinstance(c.get(a), bool) for a in AXES)]


def _by_test(run: dict, kinds: tuple[str, ...]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in run.get("cases", []):
        if c.get("test") in kinds:
            out.setdefault(str(c.get("test_name")), []).append(c)
    return out


def _sweeps(cases: list[dict]) -> list[str]:
    """The variables the test varies (each gets a figure); a test at one point is drawn against its size."""
    return [a for a in AXES if len({c[a] for c in cases}) > 1] or ["size"]


def _stack_order(labels) -> list[str]:
    """legacy first (the reference), then the stacks in the order they first ran."""
    seen = list(dict.fromkeys(labels))
    return sorted(seen, key=lambda s: (s != "legacy", seen.index(s)))


def size_text(size) -> str:
    if isinstance(size, int) and size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _x_text(axis: str, value) -> str:
    return size_text(value) if axis == "size" else f"{value} conn" + ("" if value == 1 else "s")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "test"


def _grouped(cases: list[dict], axis: str) -> tuple[list, dict]:
    """x values, and the repeats per (stack label, value of the other variable or None when it is fixed) and x."""
    other = "connections" if axis == "size" else "size"
    vary_other = len({c[other] for c in cases}) > 1
    groups: dict = {}
    for c in cases:
        key = (results.stack_column(c), c[other] if vary_other else None)
        groups.setdefault(key, {}).setdefault(c[axis], []).append(c)
    xs = sorted({c[axis] for c in cases})
    order = _stack_order(k[0] for k in groups)
    others = sorted({k[1] for k in groups if k[1] is not None})
    ordered = {k: groups[k] for k in sorted(groups, key=lambda k: (order.index(k[0]), others.index(k[1])
                                                                    if k[1] is not None else 0))}
    return xs, ordered


def _series_label(stack: str, other_axis: str, other) -> str:
    return stack if other is None else f"{stack}, {_x_text(other_axis, other)}"


def throughput_plots(run: dict) -> list[Plot]:
    """Per stream/maerts test and swept variable: throughput (Gb/s against the size, msgs/s against the
    connections or at a single point) per stack, with the client's CPU on the second axis."""
    vcpus, host_cpus = repeats.vcpus_of(run), repeats.host_cpus(run)
    out = []
    for name, all_cases in _by_test(run, THROUGHPUT_TESTS).items():
        cases = _ok(run, all_cases)
        if not cases:
            continue
        kind = str(cases[0].get("test"))
        measured = _measured_name(cases)
        for axis in _sweeps(cases):
            other_axis = "connections" if axis == "size" else "size"
            xs, groups = _grouped(cases, axis)
            gbps = axis == "size" and len(xs) > 1  # one point (the smoke run's 64 B): messages/s, the seed's
            sources = set()
            series = []
            others = sorted({k[1] for k in groups if k[1] is not None})
            for (stack, other), per_x in groups.items():
                s = Series(_series_label(stack, other_axis, other), stack,
                           variant=others.index(other) if other is not None else 0)
                for x, recs in per_x.items():
                    r = [c["isoperf"] for c in recs]
                    vals = [_number(i.get("throughput_bps")) for i in r] if gbps else \
                        [_number(i.get("messages_per_s")) for i in r]
                    vals = [v / 1e9 if gbps else v for v in vals if v is not None]
                    if (v := _summary(run, vals)) is not None:
                        s.values[x] = v
                    cpu = [client_cpu(c, vcpus, host_cpus) for c in recs]
                    sources |= {src for _, src in cpu if src}
                    if (cv := _summary(run, [p for p, _ in cpu if p is not None])) is not None:
                        s.cpu[x] = cv
                series.append(s)
            cpu_label = None
            if sources:
                where = ("host: its vCPU threads" if sources == {"host"} else "guest /proc/stat"
                         if sources == {"guest"} else "host where recorded, else guest")
                cpu_label = f"{measured} CPU, % of one core ({where})"
            fixed = "" if len(xs) == 1 or any(k[1] is not None for k in groups) else \
                f", {_x_text(other_axis, cases[0][other_axis])}"
            out.append(Plot(
                name=f"{_slug(name)}-throughput-vs-{axis}", xs=xs, series=series, cpu_label=cpu_label,
                title=f"{name}: {kind} throughput and {measured} CPU{fixed}",
                xlabel="message size" if axis == "size" else "connections",
                ylabel="throughput, Gb/s" if gbps else "messages/s",
                note=f"bars: median over the repeats, error bars: its 95 % interval; lines: {measured} CPU"))
    return out


def _ratio_figure(pairs: list) -> str:
    """per_host_cpu where every compared case and its legacy case have host figures, else per_cpu."""
    def has(items, figure):
        return any(getattr(f, figure) is not None for f in items)

    return "per_host_cpu" if all(has(a.ok, "per_host_cpu") and has(b.ok, "per_host_cpu") for a, b in pairs) \
        else "per_cpu"


def ratio_plot(run: dict) -> Plot | None:
    """The seed's figure of merit: messages per CPU-second of the client (of the receiving guest when the
    client is the native peer), each stack as a multiple of the
    legacy case of the same test, size and connections (ratio of medians, paired bootstrap interval); None
    when no case has a legacy case to compare with."""
    cases = {cs.key: cs for cs in repeats.case_statistics(run) if cs.ok}
    pairs = []
    for key, cs in cases.items():
        base_key = (*key[:3], results.legacy_column(cs.records[0]))
        if base_key != key and base_key in cases:
            pairs.append((cs, cases[base_key]))
    if not pairs:
        return None
    figure = _ratio_figure(pairs)
    xs: list[str] = []
    series: dict[str, Series] = {}
    for cs, base in pairs:
        test, size, conns, stack = cs.key
        x = f"{test}\n{size_text(size)}, {_x_text('connections', conns)}"
        num = [getattr(f, figure) for f in cs.ok if getattr(f, figure) is not None]
        den = [getattr(f, figure) for f in base.ok if getattr(f, figure) is not None]
        if not num or not den or statistics.median(den) <= 0:
            continue
        ratio = statistics.median(num) / statistics.median(den)
        ci = repeats.ratio_interval(run, cs.ok, base.ok, figure)
        if x not in xs:
            xs.append(x)
        s = series.setdefault(stack, Series(stack, stack))
        s.values[x] = Value(ratio, ci.low if ci else None, ci.high if ci else None, min(len(num), len(den)))
    if not series:
        return None
    host = figure == "per_host_cpu"
    measured = _measured_name([r for cs, _ in pairs for r in cs.records])
    return Plot(
        name="per-cpu-vs-legacy", xs=xs, series=[series[k] for k in _stack_order(series)], baseline=1.0,
        title="messages per " + ("host CPU-second" if host else "consumed CPU-second") + f" of the {measured},"
        " × legacy",
        xlabel="case", ylabel="× legacy", bar_labels="{:.1f}×",
        note=(f"CPU counted on the host: the {measured}'s vCPU threads" if host else
              "CPU from the guest's /proc/stat (no host CPU record)")
        + "; error bars: paired bootstrap 95 % interval")


def latency_plots(run: dict) -> list[Plot]:
    """Per rr/crr test: p50/p90/p99 latency per stack against the swept variable, as isoperf reports them per
    run (the medians over the repeats, with intervals); the CDFs, where the records carry histograms, are
    latency_cdf_plots'."""
    out = []
    for name, all_cases in _by_test(run, LATENCY_TESTS).items():
        cases = [c for c in _ok(run, all_cases) if isinstance((c["isoperf"]).get("latency_us"), dict)]
        if not cases:
            continue
        for axis in _sweeps(cases):
            other_axis = "connections" if axis == "size" else "size"
            xs, groups = _grouped(cases, axis)
            series = []
            for (stack, other), per_x in groups.items():
                for k, p in enumerate(PERCENTILES):
                    s = Series(f"{_series_label(stack, other_axis, other)} {p}", stack, variant=k)
                    for x, recs in per_x.items():
                        vals = [_number(c["isoperf"]["latency_us"].get(p)) for c in recs]
                        if (v := _summary(run, [v for v in vals if v is not None])) is not None:
                            s.values[x] = v
                    if s.values:
                        series.append(s)
            meds = [v.median for s in series for v in s.values.values() if v.median > 0]
            out.append(Plot(
                name=f"{_slug(name)}-latency-vs-{axis}", xs=xs, series=series,
                title=f"{name}: {cases[0].get('test')} latency percentiles",
                xlabel="message size" if axis == "size" else "connections", ylabel="latency, µs",
                log=bool(meds) and max(meds) / min(meds) > 20,
                note="p50/p90/p99 as isoperf reports them per run: median over the repeats, error bars its 95 % "
                     "interval" + ("" if any(_histogram(c) for c in cases) else "; these records carry no latency"
                                   " histogram (isoperf before it kept one), so there is no CDF")))
    return out


@dataclass
class Cdf:
    """The latency distribution of one stack at one point: every transaction of every repeat together."""

    label: str
    stack: str
    latency_us: list[float]  # bucket edges, from the lower edge of the first bucket
    fraction: list[float]  # share of the transactions at or below each edge (0 ... 1)
    n: int


@dataclass
class CdfPlot:
    """Latency CDFs of a test: a panel per (size, connections) point, a line per stack."""

    name: str
    title: str
    panels: dict  # (size, connections) -> list[Cdf]
    note: str | None = None


MAX_BUCKETS = 2000  # 100 decades at 20 per decade: more is not a latency histogram


def _histogram(case: dict) -> dict | None:
    """isoperf's latency_histogram of a record, when it is one (a guest's output is checked, not trusted)."""
    h = (case.get("isoperf") or {}).get("latency_histogram")
    if not isinstance(h, dict):
        return None
    per, first, counts = h.get("buckets_per_decade"), _number(h.get("first_us")), h.get("counts")
    if not (isinstance(per, int) and 0 < per <= 1000 and first is not None and first > 0 and isinstance(counts, list)
            and 0 < len(counts) <= MAX_BUCKETS and all(isinstance(c, int) and c >= 0 for c in counts)):
        return None
    return h


def merged_histogram(hists: list[dict]) -> tuple[int, float, list[int]] | None:
    """The sum of isoperf log histograms (latency_histogram), bucket by bucket: (buckets per decade, lower edge
    of the first bucket in µs, counts). Buckets line up on the common grid 10^(k / per decade) µs; histograms
    on another grid than the first are left out. None when nothing was counted."""
    per, total = None, {}
    for h in hists:
        per = per or h["buckets_per_decade"]
        if h["buckets_per_decade"] != per:
            continue
        k0 = round(math.log10(h["first_us"]) * per)
        for i, c in enumerate(h["counts"]):
            total[k0 + i] = total.get(k0 + i, 0) + c
    if not total or not sum(total.values()):
        return None
    lo, hi = min(total), max(total)
    return per, 10 ** (lo / per), [total.get(k, 0) for k in range(lo, hi + 1)]


def cdf(label: str, stack: str, hists: list[dict]) -> Cdf | None:
    """The CDF of the merged histograms at the bucket edges (None when they counted nothing)."""
    merged = merged_histogram(hists)
    if merged is None:
        return None
    per, first, counts = merged
    n, seen = sum(counts), 0
    edges, fraction = [first], [0.0]
    for i, c in enumerate(counts):
        seen += c
        edges.append(first * 10 ** ((i + 1) / per))
        fraction.append(seen / n)
    return Cdf(label, stack, edges, fraction, n)


def latency_cdf_plots(run: dict) -> list[CdfPlot]:
    """Per rr/crr test whose records carry isoperf's latency histogram: the CDF of every transaction's latency
    per stack, all repeats together, a panel per size and connection count."""
    out = []
    for name, all_cases in _by_test(run, LATENCY_TESTS).items():
        cases = [c for c in _ok(run, all_cases) if _histogram(c)]
        if not cases:
            continue
        groups: dict = {}
        for c in cases:
            groups.setdefault((c["size"], c["connections"]), {}).setdefault(results.stack_column(c), []).append(c)
        panels = {}
        for point in sorted(groups):
            lines = [cdf(stack, stack, [_histogram(c) for c in groups[point][stack]])
                     for stack in _stack_order(groups[point])]
            if lines := [x for x in lines if x is not None]:
                panels[point] = lines
        if panels:
            out.append(CdfPlot(
                name=f"{_slug(name)}-latency-cdf", panels=panels,
                title=f"{name}: {cases[0].get('test')} latency CDF",
                note="every transaction of all repeats, from isoperf's log histogram (buckets 12 % wide)"))
    return out


def plots(run: dict) -> list[Plot | CdfPlot]:
    """Every figure the run has data for, with file names unique within the run."""
    out = [*throughput_plots(run), *([p] if (p := ratio_plot(run)) else []), *latency_plots(run),
           *latency_cdf_plots(run)]
    seen: set[str] = set()
    for p in out:
        base, n = p.name, 2
        while p.name in seen:
            p.name, n = f"{base}-{n}", n + 1
        seen.add(p.name)
    return out


def colour(stack: str, index: int) -> str:
    return _COLOURS.get(stack) or _CYCLE[index % len(_CYCLE)]


def _x_label(plot: Plot, x) -> str:
    if isinstance(x, str):
        return x
    return size_text(x) if plot.xlabel == "message size" else str(x)


def _errorbars(ax, positions: list[float], values: list[Value]) -> None:
    with_ci = [(p, v) for p, v in zip(positions, values, strict=True) if v.low is not None and v.high is not None]
    if with_ci:
        ax.errorbar([p for p, _ in with_ci], [v.median for _, v in with_ci],
                    yerr=[[max(v.median - v.low, 0) for _, v in with_ci], [max(v.high - v.median, 0)
                                                                            for _, v in with_ci]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=3)


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise FiguresError(f"matplotlib is not installed ({e}); pip install -e . installs it") from None
    return FigureCanvasAgg, Figure


def _point_text(point: tuple) -> str:
    size, conns = point
    return f"{size_text(size)}, {_x_text('connections', conns)}"


def render_cdf(plot: CdfPlot):
    """The matplotlib Figure of a CdfPlot: a panel (axes) per point, a line per stack, log latency axis."""
    FigureCanvasAgg, Figure = _matplotlib()
    n = len(plot.panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.2 * cols + 0.6, 3.4 * rows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    stacks = _stack_order(line.stack for lines in plot.panels.values() for line in lines)
    handles = {}
    for ax, (point, lines) in zip(axes, plot.panels.items(), strict=False):
        for line in lines:
            (h,) = ax.plot(line.latency_us, line.fraction, color=colour(line.stack, stacks.index(line.stack)),
                           linewidth=1.8, label=line.label)
            handles.setdefault(line.label, h)
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="gray", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(_point_text(point), fontsize="small")
        ax.set_xlabel("latency, µs")
        ax.set_ylabel("fraction of transactions")
        ax.grid(alpha=0.3, which="both", axis="x")
    for ax in axes[n:]:
        ax.remove()
    fig.suptitle(plot.title + (f"\n{plot.note}" if plot.note else ""), fontsize="medium")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 5),
               fontsize="small", frameon=False)
    return fig


def render(plot: Plot | CdfPlot):
    """The matplotlib Figure of a Plot: grouped bars (one per series and x), error bars, the CPU lines on a
    second axis (fig.axes[1]), a legend under the axes; of a CdfPlot, render_cdf's."""
    if isinstance(plot, CdfPlot):
        return render_cdf(plot)
    FigureCanvasAgg, Figure = _matplotlib()
    from matplotlib.ticker import EngFormatter
    n = max(len(plot.series), 1)
    fig = Figure(figsize=(max(6.4, 1.0 + len(plot.xs) * (0.9 + 0.25 * n)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cpu_ax = None
    width = 0.8 / n
    stacks = _stack_order(s.stack for s in plot.series)
    for i, s in enumerate(plot.series):
        offset = (i - (n - 1) / 2) * width
        points = [(k + offset, s.values[x]) for k, x in enumerate(plot.xs) if x in s.values]
        c = colour(s.stack, stacks.index(s.stack))
        bars = ax.bar([p for p, _ in points], [v.median for _, v in points], width, label=s.label, color=c,
                      hatch=_HATCHES[s.variant % len(_HATCHES)], edgecolor="black", linewidth=0.5)
        if plot.bar_labels:
            # at the bar's foot, above the axis: readable on a short bar too (white in its middle vanished on
            # a 0.5x bar) and clear of the error bar at its top
            for bar, (_, v) in zip(bars, points, strict=True):
                ax.annotate(plot.bar_labels.format(v.median), (bar.get_x() + bar.get_width() / 2, 0),
                            xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                            fontsize="small", fontweight="bold", color="black",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        _errorbars(ax, [p for p, _ in points], [v for _, v in points])
        if plot.cpu_label and s.cpu:
            if cpu_ax is None:
                cpu_ax = ax.twinx()
                cpu_ax.set_ylabel(plot.cpu_label)
            cpu = [(k + offset, s.cpu[x]) for k, x in enumerate(plot.xs) if x in s.cpu]
            cpu_ax.plot([p for p, _ in cpu], [v.median for _, v in cpu], linestyle="--", marker="o",
                             color=c, markeredgecolor="black", label=f"{s.label} CPU")
            _errorbars(cpu_ax, [p for p, _ in cpu], [v for _, v in cpu])
    if cpu_ax is not None:
        top = max([v.high or v.median for s in plot.series for v in s.cpu.values()] + [100.0])
        cpu_ax.set_ylim(0, top * 1.1)
    if plot.baseline is not None:
        ax.axhline(plot.baseline, color="black", linestyle=":", linewidth=1, label="legacy = 1")
    if plot.log:
        ax.set_yscale("log")
    elif plot.ylabel == "messages/s":
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 1.2M, not 1.2 under a 1e6
    if not plot.log:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    ax.set_xticks(range(len(plot.xs)), [_x_label(plot, x) for x in plot.xs])
    ax.set_xlim(-0.6, len(plot.xs) - 0.4)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.suptitle(plot.title, fontsize="medium")
    if plot.note:
        ax.set_title(textwrap.fill(plot.note, 110), fontsize="x-small", color="dimgray")
    handles, labels = ax.get_legend_handles_labels()
    if cpu_ax is not None:
        h2, l2 = cpu_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4), fontsize="small",
                   frameon=False)
    return fig


def draw(run: dict, run_dir: Path) -> list[Path]:
    """Draw every figure of the run into run_dir/figures/ as PNG and SVG; returns the files written."""
    out_dir = Path(run_dir) / FIGURES_DIR
    written = []
    for plot in plots(run):
        fig = render(plot)
        out_dir.mkdir(exist_ok=True)
        for fmt in FORMATS:
            path = out_dir / f"{plot.name}.{fmt}"
            fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            written.append(path)
    return written

"""A Comparison as text: the rich table for a terminal, and compare.md (Markdown: also what a pipe or a CI log
gets, whole lines, never cut to a width), from the same rows. Pure: a Comparison in, text or a Table out.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbed.harness.compare import (
    FAILED_IN_NEW,
    IMPROVEMENT,
    LOAD_DIFFERS,
    REGRESSION,
    UNSURE,
    VERDICT_TEXT,
    Comparison,
    MetricChange,
    case_label,
)

HEADERS = ["case", "metric", "BASE median (n)", "NEW median (n)", "change", "95 % CI of change", "p", "verdict"]
_LEFT = {"case", "metric", "verdict"}
_STYLE = {REGRESSION: "bold red", IMPROVEMENT: "green", UNSURE: "yellow", FAILED_IN_NEW: "bold red",
          LOAD_DIFFERS: "yellow"}


def _value(v: float) -> str:
    return format(v, ".1f") if abs(v) < 100 else format(v, ",.0f")


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


def _p(m: MetricChange) -> str:
    """The one-sided p-value in the direction the median moved."""
    worse = m.change < 1 if m.metric.higher_is_better else m.change > 1
    p = m.p_worse if worse else m.p_better
    return "-" if p is None else format(p, ".3g")


def rows(c: Comparison) -> list[list[str]]:
    out = []
    for m in c.changes:
        ci = "-" if m.interval is None else f"{_pct(m.interval.low)} … {_pct(m.interval.high)}"
        out.append([case_label(m.key), m.metric.label, f"{_value(m.base_median)} ({len(m.base)})",
                    f"{_value(m.new_median)} ({len(m.new)})", _pct(m.change), ci, _p(m), m.verdict])
    return out


def headline(c: Comparison) -> str:
    regs, imps, failed = len(c.regressions), len(c.improvements), len(c.failed_in_new)
    parts = [f"{regs} regression{'s' if regs != 1 else ''}", f"{imps} improvement{'s' if imps != 1 else ''}"]
    if failed:
        parts.append(f"{failed} case{'s' if failed != 1 else ''} failed in NEW")
    return ("REGRESSED: " if c.regressed else "no regression: ") + ", ".join(parts)


def settings_line(c: Comparison) -> str:
    s = c.settings
    return (f"threshold {s.threshold * 100:g} %, alpha {s.alpha:g} (exact one-sided Mann–Whitney), at least "
            f"{s.min_repeats} repeats a side, {s.confidence * 100:g} % bootstrap intervals of the ratio of medians "
            f"({s.resamples} resamples, seed {s.seed})")


def case_lines(c: Comparison) -> list[str]:
    """Cases that cannot be compared: in one run only, or failed in every repeat on a side."""
    out = [f"only in BASE: {case_label(m.key)} ({m.base_ok} ok, {m.base_failed} failed)" for m in c.only_base]
    out += [f"only in NEW: {case_label(m.key)} ({m.new_ok} ok, {m.new_failed} failed)" for m in c.only_new]
    out += [f"{m.verdict}: {case_label(m.key)} (BASE {m.base_ok} ok, {m.base_failed} failed; NEW {m.new_ok} ok, "
            f"{m.new_failed} failed)" for m in c.cases if m.verdict]
    out += [f"failed repeats: {case_label(m.key)} (BASE {m.base_failed} of {m.base_ok + m.base_failed}, NEW "
            f"{m.new_failed} of {m.new_ok + m.new_failed}; compared over the rest)"
            for m in c.cases if not m.verdict and m.in_base and m.in_new and (m.base_failed or m.new_failed)]
    return out


def legend(c: Comparison) -> list[str]:
    shown = {m.verdict for m in c.changes} | {m.verdict for m in c.cases if m.verdict}
    return [f"{v}: {text}" for v, text in VERDICT_TEXT.items() if v in shown]


def markdown(c: Comparison, figure: str | None = None) -> str:
    lines = [f"# Comparison: BASE {c.base_id} → NEW {c.new_id}", "", f"**{headline(c)}**", "", settings_line(c)]
    if c.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in c.warnings]
    lines += ["", "| " + " | ".join(HEADERS) + " |",
              "|" + "|".join("---" if h in _LEFT else "--:" for h in HEADERS) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows(c)]
    if not c.changes:
        lines += ["", "No case has figures in both runs."]
    if cl := case_lines(c):
        lines += ["", "## Cases not compared, or compared over fewer repeats", ""] + [f"- {x}" for x in cl]
    if lg := legend(c):
        lines += ["", "## Verdicts", ""] + [f"- {x}" for x in lg]
    if figure:
        lines += ["", f"![change per case and metric]({figure})"]
    return "\n".join(lines) + "\n"


def table(c: Comparison) -> Table:
    t = Table(title=escape(f"BASE {c.base_id} → NEW {c.new_id}"))
    for h in HEADERS:
        t.add_column(h, justify="left" if h in _LEFT else "right")
    for row, m in zip(rows(c), c.changes, strict=True):
        style = _STYLE.get(m.verdict)
        cells = [escape(x) for x in row]
        if style:
            cells[-1] = f"[{style}]{cells[-1]}[/{style}]"
        t.add_row(*cells)
    return t


def print_comparison(c: Comparison, console: Console, figure: str | None = None) -> None:
    """On a terminal the rich table; elsewhere (a pipe, a CI log) compare.md's text, whole."""
    if not console.is_terminal:
        console.file.write(markdown(c, figure))
        console.file.flush()
        return
    console.print(table(c))
    console.print(escape(settings_line(c)), highlight=False)
    for w in c.warnings:
        console.print(escape(f"warning: {w}"), style="yellow", highlight=False)
    for line in case_lines(c):
        console.print(escape(line), style="yellow", highlight=False)
    for line in legend(c):
        console.print(escape(line), highlight=False)
    console.print(escape(headline(c)), style="bold red" if c.regressed else "bold green", highlight=False)

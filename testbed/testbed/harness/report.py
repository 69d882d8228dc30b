"""The table of a run: one row per case, throughput next to the device-model frames that carried it.

The stack column says "iso×2" for two isostackd instances and "+locks" for the lock ablation.
rr/crr rows add transactions/s and p50/p99 latency (µs). A cross-checked case is followed by a row of what
iperf3 (stream: Gb/s) or sockperf ping-pong (rr: trans/s, p50/p99 µs) measured between the same guests, in
the same columns. Printed with rich on the terminal and stored as report.md next to run.json; both come from
`rows()`. A `suspect` column names what may have moved a case's figure (suspects.LEGEND, explained under
the tables); with repeats, a table per case gives the median, its bootstrap 95 % interval and the CV, and the
IsoStack vs legacy table an interval for each ratio. report.md also lists, per case, each guest's NIC
placement (queue IRQ affinities, RPS) and where the isostackd instances ran, and where the run was measured
(commit, host, versions). Off a terminal the tables print whole (testbed.console.print_whole).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbed.console import print_whole
from testbed.harness import cost, placement_cmd, repeats, results, stats, suspects

_RIGHT = {"size", "conns", "Gb/s", "msgs/s", "trans/s", "p50 µs", "p99 µs", "CPU client %", "CPU server %"}
CROSSCHECK_MARK = "↳ "  # test cell of a cross-check row: "↳ iperf3"


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or value == "" else format(value, spec)


def _us(value) -> str:
    """Latency in µs: one decimal below 100 µs, whole µs above (TCG latencies run into the 10,000s)."""
    if value is None:
        return "-"
    return format(value, ".1f") if value < 100 else format(value, ",.0f")


def _ports(run: dict) -> tuple[str, str]:
    """The first two device-model ports of the topology: the a→b / b→a of the table."""
    ports = ((run.get("topology") or {}).get("device_model") or {}).get("ports")
    names = [str(p) for p in ports] if isinstance(ports, list) else []
    a, b = (names + ["a", "b"])[:2]
    return a, b


def headers(run: dict) -> list[str]:
    a, b = _ports(run)
    return [
        "test",
        "stack",
        "size",
        "conns",
        "Gb/s",
        "msgs/s",
        "trans/s",
        "p50 µs",
        "p99 µs",
        "CPU client %",
        "CPU server %",
        f"DM frames {a}→{b}",
        f"DM frames {b}→{a}",
        "suspect",
        "verified",
        "status",
    ]


def crosscheck_text(cc: dict | None) -> str:
    """What iperf3 / sockperf measured, as one phrase (progress log)."""
    if not cc:
        return "-"
    name = cc.get("tool", "?")
    if cc.get("skipped"):
        return f"{name}: skipped ({cc['skipped']})"
    if cc.get("error"):
        return f"{name}: failed"
    if "throughput_bps" in cc:
        return f"{name} {cc['throughput_bps'] / 1e9:.3f} Gb/s"
    lat = cc.get("latency_us") or {}
    tps = _fmt(cc.get("transactions_per_s"), ",.0f")
    return f"{name} {tps} trans/s, p50 {_us(lat.get('p50'))} p99 {_us(lat.get('p99'))} µs"


def summary(case: dict) -> str:
    """One line of a finished case's figures (the runner's progress log)."""
    r = case.get("isoperf") or {}
    text = f"{r.get('throughput_bps', 0) / 1e9:.3f} Gb/s"
    if "transactions_per_s" in r:
        lat = r.get("latency_us") or {}
        text = f"{r['transactions_per_s']:,.0f} trans/s, p50 {_us(lat.get('p50'))} p99 {_us(lat.get('p99'))} µs, {text}"
    cc = case.get("crosscheck")
    return f"{text}; {crosscheck_text(cc)}" if cc else text


def _case_row(case: dict, a: str, b: str, cpus: int | None = None) -> list[str]:
    r = case.get("isoperf") or {}
    cpu = r.get("cpu") or {}
    dm = case.get("device_model") or {}
    delta = dm.get("delta") or {}
    verified = r.get("verified")
    status = str(case.get("status", "?"))
    if not case.get("error") and dm.get("crossed") is False:
        status = "data not seen by the device model"
    lat = r.get("latency_us") or {}
    return [
        str(case.get("test_name", "?")),
        results.stack_column(case),
        _size(case),
        str(case.get("connections", "?")),
        _fmt(r["throughput_bps"] / 1e9 if "throughput_bps" in r else None, ".3f"),
        _fmt(r.get("messages_per_s"), ",.0f"),
        _fmt(r.get("transactions_per_s"), ",.0f"),
        _us(lat.get("p50")),
        _us(lat.get("p99")),
        _fmt((cpu.get("client") or {}).get("all"), ".1f"),
        _fmt((cpu.get("server") or {}).get("all"), ".1f"),
        _fmt((delta.get(a) or {}).get("from_guest_frames"), ",d", "n/a"),
        _fmt((delta.get(b) or {}).get("from_guest_frames"), ",d", "n/a"),
        " ".join(suspects.case_marks(case, cpus)),
        "-" if verified is None else ("yes" if verified else "NO"),
        status,
    ]


def _size(case: dict) -> str:
    size = str(case.get("size", "?"))
    if case.get("response_size") not in (None, case.get("size")):
        size += f"/{case['response_size']}"
    return size


def _crosscheck_row(case: dict, cc: dict) -> list[str]:
    lat = cc.get("latency_us") or {}
    status = "ok"
    if cc.get("skipped"):
        status = "skipped"
    elif cc.get("error"):
        status = "failed"
    bps = cc.get("throughput_bps")
    return [
        f"{CROSSCHECK_MARK}{cc.get('tool', '?')}",
        str(case.get("stack", "?")),
        _size(case),
        "1" if cc.get("tool") == "sockperf" else str(case.get("connections", "?")),
        _fmt(bps / 1e9 if bps is not None else None, ".3f"),
        "-",
        _fmt(cc.get("transactions_per_s"), ",.0f"),
        _us(lat.get("p50")),
        _us(lat.get("p99")),
        "-",
        "-",
        "-",
        "-",
        "",
        "-",
        status,
    ]


def table_rows(run: dict) -> list[tuple[list[str], dict, bool]]:
    """(cells, case, is a cross-check row) for every case and, under it, its cross-check if it has one."""
    a, b = _ports(run)
    cpus = repeats.host_cpus(run)
    out = []
    for case in run.get("cases", []):
        out.append((_case_row(case, a, b, cpus), case, False))
        cc = case.get("crosscheck")
        if cc:
            out.append((_crosscheck_row(case, cc), case, True))
    return out


def rows(run: dict) -> list[list[str]]:
    """Plain-text cells per row; status is "ok", "failed" or a warning that the switch saw nothing."""
    return [cells for cells, _case, _cc in table_rows(run)]


def _title(run: dict) -> str:
    title = f"{(run.get('playbook') or {}).get('name', '?')} - run {run.get('run_id', '?')}"
    accel = (run.get("topology") or {}).get("accel")
    return f"{title} ({accel})" if accel else title


def build_table(run: dict) -> Table:
    table = Table(title=escape(_title(run)))
    for h in headers(run):
        table.add_column(h, justify="right" if h in _RIGHT or h.startswith("DM ") else "left")
    for cells, case, is_crosscheck in table_rows(run):
        cells = [escape(c) for c in cells]
        if is_crosscheck:
            if cells[-1] != "ok":
                cells[-1] = f"[yellow]{cells[-1]} (see below)[/yellow]"
            table.add_row(*cells)
            continue
        if cells[-2] == "NO":
            cells[-2] = "[red]NO[/red]"
        if case.get("error"):
            cells[-1] = f"[red]{cells[-1]} (see below)[/red]"
        elif cells[-1] != "ok":
            cells[-1] = f"[yellow]{cells[-1]}[/yellow]"
        table.add_row(*cells)
    return table


def _case_name(case: dict) -> str:
    """How the error and note lines name a case: test name, size and connections."""
    return f"{case.get('test_name')} size={case.get('size')} conns={case.get('connections')}"


def errors(run: dict) -> list[str]:
    out = []
    for c in run.get("cases", []):
        where = _case_name(c)
        if c.get("error"):
            out.append(f"{where}: {c['error']}")
        cc = c.get("crosscheck") or {}
        if cc.get("error"):
            out.append(f"{where}: cross-check {cc.get('tool')}: {cc['error']}")
    return out


def notes(run: dict) -> list[str]:
    """Why a cross-check was skipped (not an error: the tool cannot run that case), and isostackd's safety net
    at work: tx rings it found stranded and drained (tx_stranded; late SENDs were slow, the rest were lost)."""
    out = []
    for c in run.get("cases", []):
        where = _case_name(c)
        if (cc := c.get("crosscheck") or {}).get("skipped"):
            out.append(f"{where}: cross-check {cc.get('tool')} skipped: {cc['skipped']}")
        for inst in c.get("isostackd") or []:
            st = inst.get("stats") if isinstance(inst, dict) else None
            n = st.get("tx_stranded") if isinstance(st, dict) else None
            if isinstance(n, int) and n > 0:
                late = st.get("tx_stranded_late_send")
                out.append(f"{where} {results.stack_column(c)}: isostackd instance {inst.get('instance', 0)} drained "
                           f"{n} stranded tx ring(s)" + (f", {late} of them with a late SEND" if late is not None
                                                         else ""))
        for guest, p in (c.get("placement") or {}).items():
            if isinstance(p, dict) and p.get("irqs_as_intended") is False:
                out.append(f"{where} {results.stack_column(c)}: {guest}: the NIC's interrupts were meant for vCPU"
                           f" {_cpus(p.get('irq_cpus'))}, set to {_cpus(p.get('irq_cpus_applied'))} and taken on"
                           f" {_cpus(p.get('irq_cpus_measured')) or 'none'}"
                           + (f" ({p['irqs_elsewhere']} of {p['irqs_counted']} elsewhere)"
                              if isinstance(p.get("irqs_elsewhere"), int) and p.get("irqs_counted") else "")
                           + ": not the placement asked for")
    return out


def _cpus(cpus) -> str:
    return ",".join(str(c) for c in cpus) if isinstance(cpus, list) else "?"


def _pinning(p: dict) -> str:
    """" [apart: app on vCPU 0, IRQs on vCPU 1, taken on 1]": a guest's placement mode and what the counts showed
    ("" for records from before the placement axis)."""
    if not isinstance(p.get("placement_mode"), str):
        return ""
    app, irq, measured = p.get("app_cpus"), p.get("irq_cpus"), p.get("irq_cpus_measured")
    text = f" [{p['placement_mode']}: app on {f'vCPU {_cpus(app)}' if app else 'any vCPU'}, IRQs"
    text += f" on vCPU {_cpus(irq)}" if irq else " spread"
    if isinstance(measured, list):
        text += f", taken on {_cpus(measured) or 'none'}"
    return text + (", NOT as meant]" if p.get("irqs_as_intended") is False else "]")


def placements(run: dict) -> list[str]:
    """Per case, where the NIC queues' interrupts were placed in each guest and where isostackd ran."""
    out = []
    for c in run.get("cases", []):
        placement = c.get("placement") or {}
        if not placement:
            continue
        parts = []
        for guest, p in placement.items():
            layout = p.get("layout") if isinstance(p, dict) else None
            text = f"{guest} {p.get('mode', '?') if isinstance(p, dict) else '?'}"
            text += _pinning(p) if isinstance(p, dict) else ""
            if guest == c.get("client") and c.get("isostackd"):
                text += " (" + ", ".join(
                    f"instance {i.get('instance')} on vCPU {i.get('cpu')} queues "
                    f"{i['queues'] if isinstance(i.get('queues'), str) else ','.join(map(str, i.get('queues') or []))}"
                    for i in c["isostackd"]) + ")"
            parts.append(f"{text}: {placement_cmd.summary(layout) if isinstance(layout, dict) else 'layout unknown'}")
        out.append(f"{c.get('test_name')} {results.stack_column(c)} size={c.get('size')} conns={c.get('connections')}:"
                   f" {'; '.join(parts)}")
    return out


COMPARISON_HEADERS = ["test", "size", "conns", "stack", "runs", "msgs/s", "msgs/CPU-s", "× legacy msgs/s",
                      "95 % CI msgs/s", "× legacy per CPU", "95 % CI per CPU", "client retrans %",
                      "msgs/host-CPU-s", "× legacy per host CPU", "95 % CI per host CPU", "suspect"]
REPEATS_HEADERS = ["test", "size", "conns", "stack", "runs", "failed", "msgs/s", "95 % CI", "CV %", "msgs/CPU-s",
                   "95 % CI per CPU", "CV % per CPU", "msgs/host-CPU-s", "95 % CI per host CPU",
                   "CV % per host CPU", "suspect"]
_LEFT = ("test", "stack", "suspect")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _interval(interval: stats.Interval | None, spec: str) -> str:
    return "-" if interval is None else f"{format(interval.low, spec)}–{format(interval.high, spec)}"


def _cv(summary: stats.Summary | None) -> str:
    return "-" if summary is None or summary.cv is None else format(100 * summary.cv, ".1f")


def repeats_rows(run: dict) -> list[list[str]]:
    """Per case over its repeats: runs that succeeded and failed, the median of msgs/s and msgs per CPU-second
    with its bootstrap 95 % interval and CV, and the suspect marks of any repeat (repeats.case_statistics)."""
    out = []
    for cs in repeats.case_statistics(run):
        test, size, conns, stack = cs.key
        mps, per_cpu, per_host = cs.messages_per_s, cs.per_cpu, cs.per_host_cpu
        out.append([str(test), _size(cs.records[0]), str(conns), stack, str(len(cs.ok)), str(cs.failed),
                    _fmt(mps.median if mps else None, ",.0f"), _interval(mps.interval if mps else None, ",.0f"),
                    _cv(mps), _fmt(per_cpu.median if per_cpu else None, ",.0f"),
                    _interval(per_cpu.interval if per_cpu else None, ",.0f"), _cv(per_cpu),
                    _fmt(per_host.median if per_host else None, ",.0f"),
                    _interval(per_host.interval if per_host else None, ",.0f"), _cv(per_host), " ".join(cs.marks)])
    return out


def comparison_rows(run: dict) -> list[list[str]]:
    """Each stack's cases against the legacy cases of the same test, size, connections (and placement, when the
    run has several: the same layout for both stacks) in this run: messages/s
    and messages per consumed CPU-second of the client guest (its busy share of all vCPUs from /proc/stat, times
    the vCPUs) — the seed's figure of merit ("10x the legacy stack's messages per consumed CPU").  With repeats
    each figure is the median over the repeats that succeeded (`runs`), and the ratios are ratios of medians,
    each with its bootstrap 95 % interval over the pairs of repeats (repeats.ratio_interval).
    The client guest's retransmitted share of its TCP segments (median) shows a case spent in loss recovery;
    msgs/host-CPU-s is the same cost counted on the host: the client guest's vCPU threads (`host_cpu`).
    `suspect` lists the marks of any of the case's repeats (suspects.LEGEND)."""
    cases = {cs.key: cs for cs in repeats.case_statistics(run) if cs.ok}

    def medians(items: list[repeats.Figures]) -> tuple:
        return tuple(_median([f[i] for f in items if f[i] is not None]) for i in (1, 2, 3, 4))

    def base_key(cs: repeats.CaseStatistics) -> repeats.CaseKey:  # the legacy case of the same placement
        return (*cs.key[:3], results.legacy_column(cs.records[0]))

    compared = {base_key(cs) for k, cs in cases.items() if base_key(cs) != k and base_key(cs) in cases}
    out = []
    for (test, _sz, conns, stack), cs in cases.items():
        if base_key(cs) not in compared:  # no pair: nothing to compare (a legacy-only run has no table)
            continue
        base_items = cases[base_key(cs)].ok
        mps, per_cpu, retrans, per_host = medians(cs.ok)
        base = medians(base_items)
        is_base = base_key(cs) == cs.key
        per_cpu_ratio = per_cpu / base[1] if per_cpu and base[1] else None
        per_host_ratio = per_host / base[3] if per_host and base[3] else None
        mps_ci = None if is_base else repeats.ratio_interval(run, cs.ok, base_items, "mps")
        per_cpu_ci = None if is_base or per_cpu_ratio is None else repeats.ratio_interval(run, cs.ok, base_items,
                                                                                           "per_cpu")
        per_host_ci = None if is_base or per_host_ratio is None else repeats.ratio_interval(
            run, cs.ok, base_items, "per_host_cpu")
        out.append([str(test), _size(cs.records[0]), str(conns), stack, str(len(cs.ok)), _fmt(mps, ",.0f"),
                    _fmt(per_cpu, ",.0f"), "–" if is_base else _fmt(mps / base[0], ".1f"),
                    "–" if is_base else _interval(mps_ci, ".1f"),
                    "–" if is_base else _fmt(per_cpu_ratio, ".1f"),
                    "–" if is_base else _interval(per_cpu_ci, ".1f"), _fmt(retrans, ".2f"),
                    _fmt(per_host, ",.0f"), "–" if is_base else _fmt(per_host_ratio, ".1f"),
                    "–" if is_base else _interval(per_host_ci, ".1f"), " ".join(cs.marks)])
    return out


COST_TITLE = "Where the host CPU went: µs per message (median over repeats)"
COST_HEADERS = ["test", "size", "conns", "stack", "runs", "client guest", *cost.PARTS]


def cost_rows(run: dict) -> list[list[str]]:
    """Per case: the client guest's host CPU per message (the inverse of msgs/host-CPU-s) and its split by part
    (cost.breakdown), medians over the repeats that have the figures."""
    out = []
    for (test, _key_size, conns, stack), records in repeats.groups(run).items():
        parts = [b for r in records if not r.get("error") and (b := cost.breakdown(r))]
        if not parts:
            continue
        guest = [sum(v for k, v in b.items() if k in cost.GUEST_PARTS) for b in parts]
        out.append([str(test), _size(records[0]), str(conns), stack, str(len(parts)), _fmt(_median(guest), ".2f")]
                   + [_fmt(_median([b[p] for b in parts if p in b]), ".2f") for p in cost.PARTS])
    return out


def build_cost(run: dict) -> Table | None:
    cells = cost_rows(run)
    return _table(COST_TITLE, COST_HEADERS, cells) if cells else None


def _table(title: str, headers_: list[str], cells: list[list[str]]) -> Table:
    table = Table(title=title)
    for h in headers_:
        table.add_column(h, justify="left" if h in _LEFT else "right")
    for row in cells:
        table.add_row(*(escape(c) for c in row))
    return table


def build_comparison(run: dict) -> Table | None:
    cmp_rows = comparison_rows(run)
    if not cmp_rows:
        return None
    return _table(COMPARISON_TITLE, COMPARISON_HEADERS, cmp_rows)


def build_repeats(run: dict) -> Table | None:
    """The repeats table, when some case ran more than once (one run per case has no spread to show)."""
    if not _has_repeats(run):
        return None
    return _table(_REPEATS_TITLE, REPEATS_HEADERS, repeats_rows(run))


_REPEATS_TITLE = "Repeats: median, bootstrap 95 % interval of the median, CV"
COMPARISON_TITLE = ("IsoStack vs legacy in this run (CPU of the client guest, or of the receiving guest when the"
                    " peer sends)")


def _has_repeats(run: dict) -> bool:
    return any(len(records) > 1 for records in repeats.groups(run).values())


def legend(run: dict) -> list[str]:
    """What the suspect marks shown in the run's tables mean (suspects.LEGEND)."""
    cpus = repeats.host_cpus(run)
    shown = {m for c in run.get("cases", []) for m in suspects.case_marks(c, cpus)}
    if _has_repeats(run) or comparison_rows(run):  # the tables per case also show "failed"
        shown |= {m for cases in repeats.groups(run).values() for m in suspects.group_marks(cases, cpus)}
    return suspects.legend(shown)


def _order_line(run: dict) -> str | None:
    """How the cases were laid out in time and the seed of the shuffle and the intervals (run.json `order`)."""
    order = run.get("order")
    if not isinstance(order, dict):
        return None
    pause = order.get("interval_s")
    return (f"run order {order.get('order')}, seed {order.get('seed')}"
            + (f", {pause:g} s between cases" if pause else ""))


def print_report(run: dict, run_json: Path, console: Console) -> None:
    print_whole(console, build_table(run))
    for table in (build_repeats(run), build_comparison(run), build_cost(run)):
        if table is not None:
            print_whole(console, table)
    if marks := legend(run):
        console.print(escape("suspect: " + "; ".join(marks)), style="yellow", highlight=False)
    for line in errors(run):
        console.print(escape(line), style="red", highlight=False)
    for line in notes(run):
        console.print(escape(line), style="yellow", highlight=False)
    git = (run.get("metadata") or {}).get("git") or {}
    if git.get("commit"):
        console.print(f"commit {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}")
    if order := _order_line(run):
        console.print(order, highlight=False)
    console.print(f"results: {run_json}", highlight=False)


def _align(header: str) -> str:
    if header == "verified":
        return ":-:"
    return "--:" if header in _RIGHT or header.startswith("DM ") else "---"


def _md_table(headers_: list[str], cells: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(headers_) + " |", "|" + "|".join("---" if h in _LEFT else "--:" for h in headers_) + "|"]
            + ["| " + " | ".join(row) + " |" for row in cells])


def markdown(run: dict) -> str:
    """The same table as Markdown, stored as report.md next to run.json for reading without tools."""
    topo = run.get("topology") or {}
    lines = [
        f"# {_title(run)}",
        "",
        f"accel: {topo.get('accel', '?')}, started {run.get('started_at')}, ended {run.get('ended_at')}",
        "",
        "| " + " | ".join(headers(run)) + " |",
        "|" + "|".join(_align(h) for h in headers(run)) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in rows(run)]
    if order := _order_line(run):
        lines[2] += f", {order}"
    lines[3:3] = ["", host_line(run)]
    if _has_repeats(run):
        lines += ["", f"## {_REPEATS_TITLE}", ""] + _md_table(REPEATS_HEADERS, repeats_rows(run))
    cmp_rows = comparison_rows(run)
    if cmp_rows:
        lines += ["", f"## {COMPARISON_TITLE}", ""]
        lines += _md_table(COMPARISON_HEADERS, cmp_rows)
    if cost_cells := cost_rows(run):
        lines += ["", f"## {COST_TITLE}", ""] + _md_table(COST_HEADERS, cost_cells)
    if marks := legend(run):
        lines += ["", "## Suspect marks", ""] + [f"- {m}" for m in marks]
    errs = errors(run)
    if errs:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errs]
    if notes(run):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes(run)]
    if placements(run):
        lines += ["", "## Placement (NIC queue IRQs → vCPU, RPS masks)", ""] + [f"- {n}" for n in placements(run)]
    lines += ["", "## Metadata", ""] + [f"- {m}" for m in metadata_lines(run)]
    return "\n".join(lines) + "\n"


def host_line(run: dict) -> str:
    """"commit 0123456789ab (dirty), host vm (Intel(R) Xeon(R), 2 CPUs)": what report.md says under its title."""
    md = run.get("metadata") or {}
    git = md.get("git") or {}
    commit = f"commit {str(git['commit'])[:12]}" if git.get("commit") else "commit unknown"
    cpu = ", ".join(x for x in (md.get("host_cpu_model"), f"{md['host_cpu_count']} CPUs"
                                if md.get("host_cpu_count") else None) if x)
    return f"{commit}{' (dirty)' if git.get('dirty') else ''}, host {md.get('hostname', '?')}" + (
        f" ({cpu})" if cpu else "")


def metadata_lines(run: dict) -> list[str]:
    """Where and with what the run was measured (run.json `metadata`), one line each; "?" where not recorded."""
    md = run.get("metadata") or {}
    git = md.get("git") or {}
    image = md.get("guest_image") if isinstance(md.get("guest_image"), dict) else {}
    out = [
        f"commit: {git.get('commit') or '?'}" + (" (dirty: the work tree differed from it)" if git.get("dirty")
                                                   else "" if git.get("dirty") is False else " (dirty: ?)"),
        f"host: {md.get('hostname', '?')}, CPU {md.get('host_cpu_model') or '?'} × {md.get('host_cpu_count', '?')},"
        f" kernel {md.get('host_kernel', '?')}",
        f"accel: {md.get('accel') or (run.get('topology') or {}).get('accel') or '?'}, device model datapath:"
        f" {md.get('device_model_datapath') or '?'}",
        f"versions: Python {md.get('python', '?')}, {md.get('qemu') or 'QEMU ?'}, libvirt {md.get('libvirt') or '?'}",
    ]
    if image:
        out.append(f"guest image: recipe {image.get('recipe_hash', '?')}, kernel {image.get('kernel_version', '?')}")
    for name, g in (md.get("guests") or {}).items():
        if isinstance(g, dict) and not g.get("native"):
            sha = str(g.get("package_sha256") or "?")[:12]
            out.append(f"guest {name}: kernel {g.get('kernel', '?')}, {g.get('python', 'Python ?')}, package {sha}"
                       + (f", on {g['host']} ({g.get('uri')})" if g.get("host") else ""))
        elif isinstance(g, dict):
            out.append(f"{name}: native peer in namespace {g.get('namespace', '?')} ({g.get('address', '?')})")
    return out

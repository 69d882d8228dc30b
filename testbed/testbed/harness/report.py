"""The table of a run: one row per case, throughput next to the device-model frames that carried it.

Printed with rich on the terminal and stored as report.md next to run.json; both come from `rows()`.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_RIGHT = {"size", "conns", "Gb/s", "msgs/s", "CPU client %", "CPU server %"}


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or value == "" else format(value, spec)


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
        "CPU client %",
        "CPU server %",
        f"DM frames {a}→{b}",
        f"DM frames {b}→{a}",
        "verified",
        "status",
    ]


def rows(run: dict) -> list[list[str]]:
    """Plain-text cells per case; status is "ok", "failed" or a warning that the switch saw nothing."""
    a, b = _ports(run)
    out = []
    for case in run.get("cases", []):
        r = case.get("isoperf") or {}
        cpu = r.get("cpu") or {}
        dm = case.get("device_model") or {}
        delta = dm.get("delta") or {}
        verified = r.get("verified")
        status = str(case.get("status", "?"))
        if not case.get("error") and dm.get("crossed") is False:
            status = "data not seen by the device model"
        out.append(
            [
                str(case.get("test_name", "?")),
                str(case.get("stack", "?")) + ("+locks" if case.get("locks") else ""),
                str(case.get("size", "?")),
                str(case.get("connections", "?")),
                _fmt(r["throughput_bps"] / 1e9 if "throughput_bps" in r else None, ".3f"),
                _fmt(r.get("messages_per_s"), ",.0f"),
                _fmt((cpu.get("client") or {}).get("all"), ".1f"),
                _fmt((cpu.get("server") or {}).get("all"), ".1f"),
                _fmt((delta.get(a) or {}).get("from_guest_frames"), ",d", "n/a"),
                _fmt((delta.get(b) or {}).get("from_guest_frames"), ",d", "n/a"),
                "-" if verified is None else ("yes" if verified else "NO"),
                status,
            ]
        )
    return out


def _title(run: dict) -> str:
    title = f"{(run.get('playbook') or {}).get('name', '?')} - run {run.get('run_id', '?')}"
    accel = (run.get("topology") or {}).get("accel")
    return f"{title} ({accel})" if accel else title


def build_table(run: dict) -> Table:
    table = Table(title=escape(_title(run)))
    for h in headers(run):
        table.add_column(h, justify="right" if h in _RIGHT or h.startswith("DM ") else "left")
    for cells, case in zip(rows(run), run.get("cases", []), strict=True):
        cells = [escape(c) for c in cells]
        if cells[10] == "NO":
            cells[10] = "[red]NO[/red]"
        if case.get("error"):
            cells[11] = f"[red]{cells[11]} (see below)[/red]"
        elif cells[11] != "ok":
            cells[11] = f"[yellow]{cells[11]}[/yellow]"
        table.add_row(*cells)
    return table


def errors(run: dict) -> list[str]:
    return [
        f"{c.get('test_name')} size={c.get('size')} conns={c.get('connections')}: {c['error']}"
        for c in run.get("cases", [])
        if c.get("error")
    ]


def print_report(run: dict, run_json: Path, console: Console) -> None:
    console.print(build_table(run))
    for line in errors(run):
        console.print(escape(line), style="red", highlight=False)
    git = (run.get("metadata") or {}).get("git") or {}
    if git.get("commit"):
        console.print(f"commit {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}")
    console.print(f"results: {run_json}", highlight=False)


def markdown(run: dict) -> str:
    """The same table as Markdown, stored as report.md next to run.json for reading without tools."""
    topo = run.get("topology") or {}
    lines = [
        f"# {_title(run)}",
        "",
        f"accel: {topo.get('accel', '?')}, started {run.get('started_at')}, ended {run.get('ended_at')}",
        "",
        "| " + " | ".join(headers(run)) + " |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|---|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in rows(run)]
    errs = errors(run)
    if errs:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errs]
    return "\n".join(lines) + "\n"

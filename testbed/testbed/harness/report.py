"""The table of a run: one row per case, throughput next to the device-model frames that carried it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or value == "" else format(value, spec)


def build_table(run: dict) -> Table:
    cases = run.get("cases", [])
    a, b = (_ports(run) + ["a", "b"])[:2]
    title = f"{(run.get('playbook') or {}).get('name', '?')} - run {run.get('run_id', '?')}"
    accel = (run.get("topology") or {}).get("accel")
    if accel:
        title += f" ({accel})"
    table = Table(title=title)
    for header, justify in [
        ("test", "left"),
        ("stack", "left"),
        ("size", "right"),
        ("conns", "right"),
        ("Gb/s", "right"),
        ("msgs/s", "right"),
        ("CPU client %", "right"),
        ("CPU server %", "right"),
        (f"DM frames {a}→{b}", "right"),
        (f"DM frames {b}→{a}", "right"),
        ("verified", "center"),
        ("status", "left"),
    ]:
        table.add_column(header, justify=justify)
    for case in cases:
        r = case.get("isoperf") or {}
        cpu = r.get("cpu") or {}
        delta = (case.get("device_model") or {}).get("delta") or {}
        verified = r.get("verified")
        status = case.get("status", "?")
        if case.get("error"):
            status = f"[red]{status} (see below)[/red]"
        elif (case.get("device_model") or {}).get("crossed") is False:
            status = "[yellow]data not seen by the device model[/yellow]"
        table.add_row(
            str(case.get("test_name", "?")),
            str(case.get("stack", "?")),
            str(case.get("size", "?")),
            str(case.get("connections", "?")),
            _fmt(r["throughput_bps"] / 1e9 if "throughput_bps" in r else None, ".3f"),
            _fmt(r.get("messages_per_s"), ",.0f"),
            _fmt((cpu.get("client") or {}).get("all"), ".1f"),
            _fmt((cpu.get("server") or {}).get("all"), ".1f"),
            _fmt((delta.get(a) or {}).get("from_guest_frames"), ",d", "n/a"),
            _fmt((delta.get(b) or {}).get("from_guest_frames"), ",d", "n/a"),
            "-" if verified is None else ("yes" if verified else "[red]NO[/red]"),
            status,
        )
    return table


def _ports(run: dict) -> list[str]:
    dm = (run.get("topology") or {}).get("device_model") or {}
    ports = dm.get("ports")
    return [str(p) for p in ports] if isinstance(ports, list) else []


def print_report(run: dict, run_json: Path, console: Console) -> None:
    console.print(build_table(run))
    for case in run.get("cases", []):
        if case.get("error"):
            label = f"{case.get('test_name')} size={case.get('size')} conns={case.get('connections')}"
            console.print(f"[red]{label}:[/red] {case['error']}", highlight=False)
    git = (run.get("metadata") or {}).get("git") or {}
    if git.get("commit"):
        console.print(f"commit {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}")
    console.print(f"results: {run_json}")


def markdown(run: dict) -> str:
    """The same table as Markdown, stored as report.md next to run.json for reading without tools."""
    a, b = (_ports(run) + ["a", "b"])[:2]
    lines = [
        f"# {(run.get('playbook') or {}).get('name', '?')} - run {run.get('run_id', '?')}",
        "",
        f"accel: {(run.get('topology') or {}).get('accel', '?')}, started {run.get('started_at')}, "
        f"ended {run.get('ended_at')}",
        "",
        f"| test | stack | size | conns | Gb/s | msgs/s | CPU client % | CPU server % | DM frames {a}→{b} "
        f"| DM frames {b}→{a} | verified | status |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|---|",
    ]
    for case in run.get("cases", []):
        r = case.get("isoperf") or {}
        cpu = r.get("cpu") or {}
        delta = (case.get("device_model") or {}).get("delta") or {}
        verified = r.get("verified")
        status = (case.get("status", "?") + (f": {case['error']}" if case.get("error") else "")).replace("|", "/")
        cells = [
            case.get("test_name", "?"),
            case.get("stack", "?"),
            case.get("size", "?"),
            case.get("connections", "?"),
            _fmt(r["throughput_bps"] / 1e9 if "throughput_bps" in r else None, ".3f"),
            _fmt(r.get("messages_per_s"), ",.0f"),
            _fmt((cpu.get("client") or {}).get("all"), ".1f"),
            _fmt((cpu.get("server") or {}).get("all"), ".1f"),
            _fmt((delta.get(a) or {}).get("from_guest_frames"), ",d", "n/a"),
            _fmt((delta.get(b) or {}).get("from_guest_frames"), ",d", "n/a"),
            "-" if verified is None else ("yes" if verified else "NO"),
            status,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"

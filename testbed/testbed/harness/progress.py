"""The run as the user watches it: a progress bar over the cases in their run order (order.arrange) and one
log line per case, each case between two readings of the host's load average, with the playbook's pause
between cases.

Also where a case counts as bad for the exit status: failed, or its data did not cross the device model.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from testbed.harness import metadata, report, results
from testbed.harness.playbook import Case
from testbed.harness.runner import Runner


def run_playbook(runner: Runner, name: str, cases: list[Case], store: results.RunStore, console: Console,
                 interval_s: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> int:
    """Run `cases` in the order given with a progress bar, `interval_s` apart; returns the number of failed or
    unproven cases."""
    bad = 0
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(name, total=len(cases))
        for k, case in enumerate(cases):
            if k and interval_s > 0:
                progress.update(task, description=f"pause {interval_s:g} s before {case.label}")
                sleep(interval_s)
            progress.update(task, description=f"{case.label} ({k + 1}/{len(cases)})")
            load_before = metadata.loadavg()
            record = runner.run_case(case)
            record["host_load"] = {"before": load_before, "after": metadata.loadavg()}
            store.add_case(record)
            if record["status"] != "ok":
                bad += 1
                progress.console.log(f"[red]{case.label}: {record['error']}[/red]")
            elif (record["device_model"] or {}).get("crossed") is False:
                bad += 1
                progress.console.log(f"[yellow]{case.label}: the device model did not carry the data[/yellow]")
            else:
                progress.console.log(f"{case.label}: {report.summary(record)}")
            if (record.get("crosscheck") or {}).get("error"):
                progress.console.log(f"[yellow]{case.label}: cross-check: {record['crosscheck']['error']}[/yellow]")
            progress.advance(task)
        progress.update(task, description=f"{name}: done")
    return bad

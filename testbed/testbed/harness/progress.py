"""The run as the user watches it: a progress bar over the cases and one log line per case.

Also where a case counts as bad for the exit status: failed, or its data did not cross the device model.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from testbed.harness import report, results
from testbed.harness.playbook import Playbook
from testbed.harness.runner import Runner


def run_playbook(runner: Runner, playbook: Playbook, store: results.RunStore, console: Console) -> int:
    """Run every case with a progress bar; returns the number of failed or unproven cases."""
    cases = playbook.cases()
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
        task = progress.add_task(playbook.name, total=len(cases))
        for case in cases:
            progress.update(task, description=case.label)
            record = runner.run_case(case)
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
        progress.update(task, description=f"{playbook.name}: done")
    return bad

"""The run as the user watches it: a progress bar over the cases in their run order (order.arrange), naming
the case running, how many are left and an ETA, and one log line per case, each case between two readings of
the host's load average, with the playbook's pause between cases.

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


def nominal_s(case: Case) -> float:
    """The seconds a case's isoperf client measures and warms up: the part of a case the playbook fixes."""
    return case.spec.warmup + case.spec.duration * case.spec.intervals


class Eta:
    """Time left: each remaining case's nominal seconds plus the mean overhead (start-up, placement, counters,
    cross-check: measured time minus nominal) of the cases run so far, plus the pauses. Before the first case
    ends the overhead is unknown and counted as 0, so the first estimate is low."""

    def __init__(self, cases: list[Case], interval_s: float = 0.0):
        self.cases = cases
        self.interval_s = interval_s
        self.overheads: list[float] = []

    def done(self, case: Case, elapsed_s: float) -> None:
        self.overheads.append(max(0.0, elapsed_s - nominal_s(case)))

    def left_s(self, k: int) -> float:
        """Seconds until the end when cases[k:] are still to run."""
        rest = self.cases[k:]
        overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 0.0
        return sum(nominal_s(c) + overhead for c in rest) + self.interval_s * max(0, len(rest) - 1)


def clock_text(seconds: float) -> str:
    """1:05:09, 4:07, 0:09."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def is_bad(record: dict) -> bool:
    """A case that counts against the run's exit status: failed, or the device model did not carry its data."""
    return record.get("status") != "ok" or (record.get("device_model") or {}).get("crossed") is False


def run_playbook(runner: Runner, name: str, cases: list[Case], store: results.RunStore, console: Console,
                 interval_s: float = 0.0, sleep: Callable[[float], None] = time.sleep, done: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> int:
    """Run `cases` in the order given with a progress bar, `interval_s` apart; `done` cases of the run ran
    before (a resumed run), so the bar counts from there. Returns the number of failed or unproven cases."""
    bad = 0
    total = done + len(cases)
    eta = Eta(cases, interval_s)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}, {task.fields[left]} left, ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(name, total=total, completed=done, left=len(cases),
                                 eta=clock_text(eta.left_s(0)))
        for k, case in enumerate(cases):
            if k and interval_s > 0:
                progress.update(task, description=f"pause {interval_s:g} s before {case.label}")
                sleep(interval_s)
            started = clock()
            progress.update(task, description=f"{case.label} ({done + k + 1}/{total})", left=len(cases) - k,
                            eta=clock_text(eta.left_s(k)))
            load_before = metadata.loadavg()
            record = runner.run_case(case)
            record["host_load"] = {"before": load_before, "after": metadata.loadavg()}
            store.add_case(record)
            eta.done(case, clock() - started)
            bad += is_bad(record)
            if record["status"] != "ok":
                progress.console.log(f"[red]{case.label}: {record['error']}[/red]")
            elif (record["device_model"] or {}).get("crossed") is False:
                progress.console.log(f"[yellow]{case.label}: the device model did not carry the data[/yellow]")
            else:
                progress.console.log(f"{case.label}: {report.summary(record)}")
            if (record.get("crosscheck") or {}).get("error"):
                progress.console.log(f"[yellow]{case.label}: cross-check: {record['crosscheck']['error']}[/yellow]")
            progress.update(task, advance=1, left=len(cases) - k - 1, eta=clock_text(eta.left_s(k + 1)))
        progress.update(task, description=f"{name}: done")
    return bad

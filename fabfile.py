"""Fabric tasks: the user-facing commands of the benchmark harness (the logic is in testbed.harness).

fab run-benchmark [--playbook playbooks/smoke.yaml] [--state-dir DIR] [--results-dir results]
fab show-result [--path results/<run>] [--results-dir results]
"""

from __future__ import annotations

from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

HERE = Path(__file__).resolve().parent


def _path(value: str) -> Path:
    """Relative paths are relative to the repository (where this file is), wherever fab runs from."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else HERE / p


@task(
    help={
        "playbook": "playbook YAML to run (default playbooks/smoke.yaml; relative paths are from the repository root)",
        "state_dir": "testbed state dir with topology.json (default $ISOSTACK_STATE_DIR or /var/tmp/isostack-testbed)",
        "results_dir": "where run directories are created (default results, in the repository root)",
    }
)
def run_benchmark(c, playbook="playbooks/smoke.yaml", state_dir=None, results_dir="results"):
    """Run a playbook between the testbed guests and store results/<UTC time>/run.json + samples.csv."""
    from testbed.console import make_console
    from testbed.harness import report, results
    from testbed.harness.benchmark import run_benchmark as _run
    from testbed.harness.errors import HarnessError

    console = make_console()
    try:
        run_json, bad = _run(_path(playbook), state_dir, _path(results_dir), console)
    except HarnessError as e:
        raise Exit(f"run-benchmark: {e}", code=2) from None
    report.print_report(results.load_run(run_json), run_json, console)
    if bad:
        raise Exit(f"run-benchmark: {bad} case(s) failed or were not carried by the device model", code=1)


@task(
    help={
        "path": "run directory or run.json (default: the newest run under --results-dir)",
        "results_dir": "where run directories are (default results)",
    }
)
def show_result(c, path=None, results_dir="results"):
    """Print the table of a stored run."""
    from testbed.console import make_console
    from testbed.harness import report, results

    try:
        run_json = results.resolve_run(_path(path) if path else None, _path(results_dir))
        run = results.load_run(run_json)
    except results.ResultsError as e:
        raise Exit(f"show-result: {e}", code=2) from None
    report.print_report(run, run_json, make_console())

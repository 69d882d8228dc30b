"""Fabric tasks: the user-facing commands of the benchmark harness (the logic is in testbed.harness).

fab run-benchmark [--playbook playbooks/smoke.yaml] [--set KEY=VALUE ...] [--state-dir DIR] [--results-dir results]
fab run-benchmark --resume results/<run>               (continue an interrupted run)
fab show-result [--path results/<run>] [--results-dir results]
fab report RUN [--results-dir results]                 (RUN: a run directory, a run.json, or "latest")
fab compare BASE NEW [--threshold 0.1] [--out DIR]     (BASE `baseline`: NEW's stored baseline)
fab promote-baseline RUN [--replace]
fab nightly [--promote]                                (make nightly: the nightly set, compared with its baseline)
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
    iterable=["set_"],
    help={
        "playbook": "playbook YAML to run (default playbooks/smoke.yaml; relative paths are from the repository root)",
        "state_dir": "testbed state dir with topology.json (default $ISOSTACK_STATE_DIR or /var/tmp/isostack-testbed)",
        "results_dir": "where run directories are created (default results, in the repository root)",
        "set_": "override a playbook value, KEY=VALUE (YAML), repeatable: duration=5 (every test), seed=7, "
                "defaults.warmup=0.5, tests.0.connections=[1,4] or tests.NAME.KEY (docs/playbooks.md)",
        "resume": "continue the interrupted run RUN (its directory or run.json) with its recorded playbook, order "
                  "and seed: runs the cases that have no successful record (no --playbook or --set with it)",
    },
)
def run_benchmark(c, playbook=None, state_dir=None, results_dir="results", set_=None, resume=None):
    """Run a playbook between the testbed guests and store results/<UTC time>/run.json + samples.csv."""
    from testbed.console import make_console
    from testbed.harness import publish, report, results
    from testbed.harness.benchmark import RunInterrupted, resume_benchmark
    from testbed.harness.benchmark import run_benchmark as _run
    from testbed.harness.errors import HarnessError

    sets = list(set_ or [])
    if resume and (playbook or sets):
        raise Exit("run-benchmark: --resume continues a run with its recorded playbook: no --playbook or --set "
                   "with it", code=2)
    console = make_console()
    try:
        if resume:
            run_json, bad = resume_benchmark(_path(resume), state_dir, console)
        else:
            run_json, bad = _run(_path(playbook or "playbooks/smoke.yaml"), state_dir, _path(results_dir), console,
                                 sets)
    except RunInterrupted as e:
        raise Exit(f"run-benchmark: {e}", code=130) from None
    except HarnessError as e:
        raise Exit(f"run-benchmark: {e}", code=2) from None
    report.print_report(results.load_run(run_json), run_json, console)
    for line in publish.outputs(run_json.parent):
        console.print(line, highlight=False, soft_wrap=True)
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
    console = make_console()
    report.print_report(run, run_json, console)
    for note in (results.incomplete(run, run_json.parent), results.failed_note(run, run_json.parent)):
        if note:
            console.print(note, style="yellow", highlight=False)


_COMPARE_HELP = {
    "threshold": "smallest change that can be a regression or improvement, a share (default 0.1: 10 %)",
    "alpha": "significance level of the exact one-sided Mann-Whitney test (default 0.05)",
    "min_repeats": "fewest successful repeats a side for a verdict (default 3; fewer: 'not enough repeats')",
    "baselines_dir": "stored baselines (default baselines/ in the repository, or $ISOSTACK_BASELINES_DIR)",
    "machine": "machine kind of the baseline (default: the run's CPU model and count, or $ISOSTACK_MACHINE)",
    "figure": "draw compare.png and compare.svg (default on; --no-figure skips matplotlib)",
}


def _settings(task_name, threshold, alpha, min_repeats):
    from testbed.harness import compare

    try:
        numbers = float(threshold), float(alpha), int(min_repeats)
    except ValueError:
        raise Exit(f"{task_name}: --threshold and --alpha take numbers (0.1), --min-repeats a whole number; got "
                   f"{threshold!r}, {alpha!r}, {min_repeats!r}", code=2) from None
    try:
        return compare.Settings(threshold=numbers[0], alpha=numbers[1], min_repeats=numbers[2])
    except ValueError as e:
        raise Exit(f"{task_name}: {e}", code=2) from None


def _baselines_dir(value):
    from testbed.harness import baselines

    return _path(value) if value else baselines.default_dir(HERE)


@task(
    positional=["base", "new"],
    help={
        "base": "run directory or run.json to compare against, or the word `baseline` for NEW's stored baseline",
        "new": "run directory or run.json to judge",
        "out": "where compare.md, compare.json and the figure go (default: NEW's run directory)",
        **_COMPARE_HELP,
    },
)
def compare(c, base, new, threshold="0.1", alpha="0.05", min_repeats="3", out=None, baselines_dir=None, machine=None,
            figure=True):
    """Compare two runs case by case; exit 1 on a regression (a change beyond --threshold, significant)."""
    from testbed.console import make_console
    from testbed.harness import comparing, results

    settings = _settings("compare", threshold, alpha, min_repeats)
    try:
        new_json = results.resolve_run(_path(new), HERE)
        base_json = comparing.resolve_base(base if base == comparing.BASELINE_WORD else _path(base), new_json,
                                           _baselines_dir(baselines_dir), machine)
        outcome = comparing.compare_runs(base_json, new_json, settings, make_console(),
                                         _path(out) if out else None, figure)
    except results.ResultsError as e:
        raise Exit(f"compare: {e}", code=2) from None
    if outcome.regressed:
        raise Exit("compare: regression (see the table)", code=1)


@task(
    positional=["run"],
    help={
        "run": "run directory or run.json to store as the baseline of its machine kind, accel and playbook",
        "replace": "replace the baseline already stored there",
        "baselines_dir": _COMPARE_HELP["baselines_dir"],
        "machine": _COMPARE_HELP["machine"],
    },
)
def promote_baseline(c, run, baselines_dir=None, machine=None, replace=False):
    """Store a complete run as the baseline that `fab compare baseline NEW` and the nightly compare with."""
    from testbed.harness import baselines, results

    try:
        path, replaced = baselines.promote(results.resolve_run(_path(run), HERE), _baselines_dir(baselines_dir),
                                           results.iso(results.utc_now()), machine, replace)
    except (results.ResultsError, baselines.BaselineError) as e:
        raise Exit(f"promote-baseline: {e}", code=2) from None
    print(f"baseline: {path}" + (f" (replaced run {replaced})" if replaced else ""))


@task(
    help={
        "playbook": "the nightly set (default playbooks/nightly.yaml)",
        "state_dir": "testbed state dir with topology.json (default $ISOSTACK_STATE_DIR or /var/tmp/isostack-testbed)",
        "results_dir": "where the night's run directory is created (default results/nightly)",
        "promote": "store this run as the baseline when there is none yet (the first night)",
        **_COMPARE_HELP,
    },
)
def nightly(c, playbook="playbooks/nightly.yaml", state_dir=None, results_dir="results/nightly",
            baselines_dir=None, machine=None, promote=False, threshold="0.1", alpha="0.05", min_repeats="3",
            figure=True):
    """Run the nightly set, write its report, compare with the baseline; exit 1 on a regression or a failed case."""
    from testbed.console import make_console
    from testbed.harness import comparing, report, results
    from testbed.harness.baselines import BaselineError
    from testbed.harness.benchmark import run_benchmark as _run
    from testbed.harness.errors import HarnessError

    settings = _settings("nightly", threshold, alpha, min_repeats)
    console = make_console()
    try:
        run_json, bad = _run(_path(playbook), state_dir, _path(results_dir), console)
    except HarnessError as e:
        raise Exit(f"nightly: {e}", code=2) from None
    report.print_report(results.load_run(run_json), run_json, console)
    try:
        outcome = comparing.nightly_step(run_json, _baselines_dir(baselines_dir), settings, console,
                                         results.iso(results.utc_now()), machine, promote, figure)
    except (results.ResultsError, BaselineError) as e:
        raise Exit(f"nightly: {e}", code=2) from None
    problems = ([f"{bad} case(s) failed or were not carried by the device model"] if bad else []) + (
        ["regression against the baseline"] if outcome.regressed else [])
    print(f"nightly: {run_json.parent}")
    if problems:
        raise Exit("nightly: " + "; ".join(problems), code=1)


@task(
    positional=["run"],
    help={
        "run": "run directory or run.json, or latest: the newest run under --results-dir",
        "results_dir": "where run directories are, for latest (default results)",
    },
)
def report(c, run, results_dir="results"):
    """Write a stored run's report.md, report.html (one self-contained page) and figures/ (PNG, SVG)."""
    from testbed.console import make_console
    from testbed.harness import publish, results

    if run.startswith("-"):  # invoke hands the first word to RUN, even --help
        raise Exit("usage: fab report RUN [--results-dir DIR] (RUN: a run directory, a run.json or latest);"
                   " fab --help report explains the options", code=2)
    try:
        run_json = results.resolve_run(None if run == "latest" else _path(run), _path(results_dir))
        data = results.load_run(run_json)
    except results.ResultsError as e:
        raise Exit(f"report: {e}", code=2) from None
    published = publish.write(data, run_json.parent)
    console = make_console()
    for line in publish.outputs(run_json.parent):
        console.print(line, highlight=False, soft_wrap=True)
    if published.figure_error:
        raise Exit(f"report: figures not drawn: {published.figure_error}", code=1)

"""The fab tasks are wired up: listed, documented, and `show-result` prints a stored run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAB = Path(sys.executable).parent / "fab"
FIXTURE_RUN = REPO / "tests" / "fixtures" / "harness" / "runs" / "20261126T100000Z"


def _fab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}  # wide enough that rich does not wrap the table
    return subprocess.run([str(FAB), *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def test_fab_lists_the_tasks():
    out = _fab("--list").stdout
    assert "run-benchmark" in out and "show-result" in out
    for name in ("compare", "promote-baseline", "nightly"):
        assert name in out


def test_run_benchmark_help_shows_the_options():
    out = _fab("run-benchmark", "--help").stdout
    for option in ("--playbook", "--state-dir", "--results-dir", "--set", "--resume"):
        assert option in out


def test_show_result_prints_the_table():
    r = _fab("show-result", "--path", str(FIXTURE_RUN))
    assert r.returncode == 0, r.stderr
    assert "stream" in r.stdout and "1448" in r.stdout
    assert f"results: {FIXTURE_RUN / 'run.json'}" in r.stdout.replace("\n", "")


def test_run_benchmark_without_a_testbed_is_a_clear_error(tmp_path):

    r = _fab("run-benchmark", "--state-dir", str(tmp_path), "--results-dir", str(tmp_path / "res"))
    assert r.returncode == 2
    assert "no testbed is up" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists()


def test_run_benchmark_with_a_bad_playbook_is_a_clear_error(tmp_path):
    pb = tmp_path / "bad.yaml"
    pb.write_text("version: 1\nname: x\ntests:\n  - name: t\n    test: stream\n    size: 64\n    duraton: 1\n")
    r = _fab("run-benchmark", "--playbook", str(pb), "--state-dir", str(tmp_path))
    assert r.returncode == 2
    assert f"{pb}:7: tests[0]: unknown key 'duraton'" in r.stderr


def _stored(tmp_path: Path, values: dict, run_id: str) -> Path:
    from compare_helpers import stream_run, write

    return write(stream_run(values, run_id=run_id), tmp_path / "results").parent


def test_compare_exits_1_on_a_regression_and_0_without(tmp_path):
    base = _stored(tmp_path, {"iso": [1e5, 1.01e5, 0.99e5]}, "20261201T000000Z")
    same = _stored(tmp_path, {"iso": [1e5, 1.02e5, 0.98e5]}, "20261202T000000Z")
    worse = _stored(tmp_path, {"iso": [0.6e5, 0.61e5, 0.59e5]}, "20261203T000000Z")
    r = _fab("compare", str(base), str(same), "--no-figure")
    assert r.returncode == 0, r.stderr
    assert "no regression: 0 regressions, 0 improvements" in r.stdout
    r = _fab("compare", str(base), str(worse), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 1
    assert "REGRESSED: 3 regressions" in r.stdout and "compare: regression" in r.stderr
    assert (tmp_path / "cmp" / "compare.md").is_file() and (tmp_path / "cmp" / "compare.png").is_file()
    r = _fab("compare", str(base), str(worse), "--threshold", "0.5", "--no-figure")
    assert r.returncode == 0, r.stdout


def test_compare_with_bad_input_is_a_clear_error(tmp_path):
    run = _stored(tmp_path, {"iso": [1e5] * 3}, "20261201T000000Z")
    r = _fab("compare", str(run), str(tmp_path / "nothing"))
    assert r.returncode == 2 and "compare: no run at" in r.stderr
    r = _fab("compare", str(run), str(run), "--threshold", "ten")
    assert r.returncode == 2 and "--threshold and --alpha take numbers" in r.stderr
    assert "Traceback" not in r.stderr


def test_promote_baseline_then_compare_with_the_word_baseline(tmp_path):
    root = tmp_path / "baselines"
    first = _stored(tmp_path, {"iso": [1e5, 1.01e5, 0.99e5]}, "20261201T000000Z")
    worse = _stored(tmp_path, {"iso": [0.6e5, 0.61e5, 0.59e5]}, "20261203T000000Z")
    flags = ("--baselines-dir", str(root), "--machine", "ci")
    r = _fab("compare", "baseline", str(worse), *flags)
    assert r.returncode == 2 and "no baseline for ci/tcg/nightly" in r.stderr
    r = _fab("promote-baseline", str(first), *flags)
    assert r.returncode == 0, r.stderr
    assert f"baseline: {root / 'ci' / 'tcg' / 'nightly' / 'run.json'}" in r.stdout
    r = _fab("promote-baseline", str(worse), *flags)
    assert r.returncode == 2 and "--replace replaces it" in r.stderr
    r = _fab("compare", "baseline", str(worse), "--no-figure", *flags)
    assert r.returncode == 1 and "BASE 20261201T000000Z → NEW 20261203T000000Z" in r.stdout


def test_show_result_says_a_run_is_incomplete_and_how_to_resume_it(tmp_path):
    import json
    import shutil

    run_dir = tmp_path / "20261126T100000Z"
    shutil.copytree(FIXTURE_RUN, run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    run["ended_at"] = None
    run["order"] = {"order": "interleaved", "seed": 1, "interval_s": 0, "cases": ["a", "b", "c"]}
    run["interrupted"] = {"at": "2026-11-26T10:01:00.000000Z", "reason": "Ctrl-C", "cases_done": 2}
    (run_dir / "run.json").write_text(json.dumps(run))
    r = _fab("show-result", "--path", str(run_dir))
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "incomplete: 2 of 3 cases ran, interrupted at 2026-11-26T10:01:00.000000Z: Ctrl-C" in out
    assert f"continue it with `fab run-benchmark --resume {run_dir}`" in out


def test_run_benchmark_set_errors_name_the_override_and_resume_excludes_a_playbook(tmp_path):
    r = _fab("run-benchmark", "--set", "duration=5", "--set", "sise=64", "--state-dir", str(tmp_path))
    assert r.returncode == 2
    assert "smoke.yaml: --set sise=64: unknown key 'sise'" in r.stderr and "did you mean 'size'?" in r.stderr
    r = _fab("run-benchmark", "--set", "duration=-1", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "smoke.yaml (--set duration=-1): tests[0]: duration must be > 0" in r.stderr
    r = _fab("run-benchmark", "--resume", str(tmp_path), "--set", "duration=5")
    assert r.returncode == 2 and "no --playbook or --set with it" in r.stderr
    r = _fab("run-benchmark", "--resume", str(tmp_path / "none"))
    assert r.returncode == 2 and "no run at" in r.stderr

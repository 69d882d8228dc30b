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


def test_run_benchmark_help_shows_the_options():
    out = _fab("run-benchmark", "--help").stdout
    for option in ("--playbook", "--state-dir", "--results-dir"):
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

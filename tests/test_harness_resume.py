"""An interrupted run keeps its finished cases, says it is incomplete, and `--resume` continues it in the
recorded order with the recorded seed and metadata (benchmark.execute / benchmark.resume, scripted guests:
no VMs)."""

from __future__ import annotations

import csv
import json

import pytest
from harness_helpers import ISO_PB, iso_runner

from testbed.harness import benchmark, results
from testbed.harness.benchmark import RunInterrupted, execute, resume
from testbed.harness.errors import HarnessError
from testbed.harness.playbook import parse_playbook

# 2 sizes x 2 stacks x 3 repeats = 12 cases, shuffled with a seed the run draws
PB = ISO_PB.replace("size: 64", "size: [64, 128]").replace("stack: iso", "stack: [legacy, iso]") \
    .replace("verify: true", "verify: true\n    repeats: 3") + "order: shuffled\n"


class Stop:
    """run_case wrapper: the `at`th call (1-based) raises `exc`, the calls in `fail` return a failed record."""

    def __init__(self, runner, at: int | None = None, exc: BaseException | None = None, fail: tuple = ()):
        self.real, self.at, self.exc, self.fail, self.calls, self.labels = runner.run_case, at, exc, fail, 0, []
        runner.run_case = self

    def __call__(self, case):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        self.labels.append(case.label)
        record = self.real(case)
        if self.calls in self.fail:
            record.update(status="failed", error="guest iso-a crashed")
        return record


def _runner(tmp_path, monkeypatch):
    runner, _client = iso_runner(tmp_path)
    monkeypatch.setattr(runner, "check_native", lambda: None)
    monkeypatch.setattr(runner, "prepare", lambda guests: {g: {"package_sha256": "abc"} for g in guests})
    return runner


def _labels(run):
    return [results.case_label(c) for c in run["cases"]]


def test_ctrl_c_keeps_the_finished_cases_and_resume_runs_the_rest_in_the_recorded_order(tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch)
    first = Stop(runner, at=5, exc=KeyboardInterrupt())
    with pytest.raises(RunInterrupted) as exc:
        execute(runner, parse_playbook(PB, "pb.yaml"), tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    run_json = exc.value.run_json
    assert "after 4 of 12 cases" in str(exc.value) and f"--resume {run_json.parent}" in str(exc.value)
    run = results.load_run(run_json)
    planned, header = run["order"]["cases"], {k: run[k] for k in ("started_at", "metadata", "topology", "playbook")}
    assert len(planned) == 12 and _labels(run) == planned[:4] == first.labels
    assert run["ended_at"] is None and run["interrupted"]["reason"] == "Ctrl-C"
    assert results.incomplete(run, run_json.parent) == (
        f"incomplete: 4 of 12 cases ran, interrupted at {run['interrupted']['at']}: Ctrl-C; continue it with "
        f"`fab run-benchmark --resume {run_json.parent}`")
    assert len(list(csv.DictReader(open(run_json.parent / "samples.csv")))) == 4

    runner2 = _runner(tmp_path, monkeypatch)  # a new harness process
    second = Stop(runner2)
    run_json2, bad = resume(runner2, run_json, ["iso-a", "iso-b"], runner2.console)
    assert run_json2 == run_json and bad == 0
    assert second.labels == planned[4:]  # only the missing cases, in the recorded (shuffled) order
    run = results.load_run(run_json)
    assert _labels(run) == planned and run["ended_at"] and run["interrupted"] is None
    assert run["order"]["seed"] == run["statistics"]["seed"]
    assert {k: run[k] for k in header} == header  # the run's start, metadata and playbook are the first part's
    assert [r["cases_to_run"] for r in run["resumes"]] == [8] and run["replaced"] == []
    assert run["resumes"][0]["changed"] == []  # the same commit and packages
    assert [(c["runs"], c["failed"]) for c in run["statistics"]["cases"]] == [(3, 0)] * 4
    assert len(list(csv.DictReader(open(run_json.parent / "samples.csv")))) == 12
    assert results.incomplete(run) is None
    assert (run_json.parent / "report.md").is_file()


def test_a_killed_harness_leaves_an_incomplete_run_that_resumes(tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch)
    Stop(runner, at=2, exc=SystemExit(137))  # not caught: as if the process died, nothing marks the run
    with pytest.raises(SystemExit):
        execute(runner, parse_playbook(PB, "pb.yaml"), tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    (run_json,) = (tmp_path / "results").glob("*/run.json")
    run = results.load_run(run_json)
    assert len(run["cases"]) == 1 and "interrupted" not in run
    assert "1 of 12 cases ran, stopped without a word" in results.incomplete(run)
    Stop(runner)
    _path, bad = resume(runner, run_json, ["iso-a", "iso-b"], runner.console)
    assert bad == 0 and _labels(results.load_run(run_json)) == run["order"]["cases"]


def test_an_error_out_of_the_runner_marks_the_run_and_names_the_resume(tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch)
    Stop(runner, at=3, exc=HarnessError("test 'stream-iso': unknown guest"))
    with pytest.raises(HarnessError) as exc:
        execute(runner, parse_playbook(PB, "pb.yaml"), tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    assert str(exc.value).startswith("test 'stream-iso': unknown guest; the run stopped after 2 of 12 cases")
    (run_json,) = (tmp_path / "results").glob("*/run.json")
    assert results.load_run(run_json)["interrupted"]["reason"] == "HarnessError: test 'stream-iso': unknown guest"


def test_resume_reruns_failed_cases_and_keeps_their_records_apart(tmp_path, monkeypatch):
    """A guest that crashed fails the cases after it; once it is back, --resume runs those again."""
    runner = _runner(tmp_path, monkeypatch)
    first = Stop(runner, fail=(11, 12))
    run_json, bad = execute(runner, parse_playbook(PB, "pb.yaml"), tmp_path / "results", ["iso-a", "iso-b"],
                            runner.console)
    assert bad == 2 and results.load_run(run_json)["ended_at"]
    assert results.incomplete(results.load_run(run_json)) is None
    assert results.failed_note(results.load_run(run_json), run_json.parent) == (
        f"2 case(s) failed; `fab run-benchmark --resume {run_json.parent}` runs them again")
    failed = first.labels[10:]
    second = Stop(runner)
    _path, bad = resume(runner, run_json, ["iso-a", "iso-b"], runner.console)
    assert bad == 0 and second.labels == failed
    run = results.load_run(run_json)
    assert sorted(_labels(run)) == sorted(run["order"]["cases"]) and all(c["status"] == "ok" for c in run["cases"])
    assert [(r["status"], r["error"]) for r in run["replaced"]] == [("failed", "guest iso-a crashed")] * 2
    assert run["resumes"][0]["replaced"] == 2 and results.failed_note(run) is None
    with pytest.raises(HarnessError, match="every case of the run succeeded: nothing to resume"):
        resume(runner, run_json, ["iso-a", "iso-b"], runner.console)


def test_resume_runs_the_recorded_playbook_and_refuses_an_order_it_cannot_rebuild(tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch)
    Stop(runner, at=2, exc=KeyboardInterrupt())
    with pytest.raises(RunInterrupted) as exc:
        execute(runner, parse_playbook(PB, tmp_path / "pb.yaml"), tmp_path / "results", ["iso-a", "iso-b"],
                runner.console)
    run_json = exc.value.run_json
    # the file is gone: the recorded text is what runs
    assert benchmark.recorded_playbook(results.load_run(run_json), run_json).tests[0].sizes == (64, 128)
    run = json.loads(run_json.read_text())
    run["order"]["seed"] += 1  # another seed gives another shuffle
    run_json.write_text(json.dumps(run))
    with pytest.raises(HarnessError, match="do not give the recorded run order"):
        resume(runner, run_json, ["iso-a", "iso-b"], runner.console)
    del run["order"]  # a run stored before the order was recorded
    run_json.write_text(json.dumps(run))
    with pytest.raises(HarnessError, match="the run has no recorded run order and seed"):
        resume(runner, run_json, ["iso-a", "iso-b"], runner.console)

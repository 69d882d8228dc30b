"""Stored baselines (harness.baselines): where a run's baseline lives, promoting one, finding it."""

from __future__ import annotations

import json

import pytest
from compare_helpers import stream_run, write

from testbed.harness import baselines, results


def test_the_machine_kind_is_the_cpu_model_and_count_or_a_given_name(monkeypatch):
    monkeypatch.delenv(baselines.ENV_MACHINE, raising=False)
    run = stream_run({"iso": [1e5]})
    assert baselines.machine_kind(run) == "intel-xeon-processor-2cpu"
    assert baselines.machine_kind(stream_run({"iso": [1e5]}, model=None, cpus=8)) == "unknown-cpu-8cpu"
    assert baselines.machine_kind(run, "GitHub hosted") == "github-hosted"
    monkeypatch.setenv(baselines.ENV_MACHINE, "lab-kvm-1")
    assert baselines.machine_kind(run) == "lab-kvm-1"


def test_the_slot_is_machine_accel_and_playbook_and_stays_inside_the_dir(tmp_path):
    run = stream_run({"iso": [1e5]}, accel="kvm", playbook="../../etc/passwd")
    where = baselines.slot(run, "m")
    assert str(where) == "m/kvm/etc-passwd"
    assert where.path(tmp_path).resolve().is_relative_to(tmp_path.resolve())


def test_promote_copies_the_run_and_find_returns_it(tmp_path):
    src = write(stream_run({"iso": [1e5] * 3}), tmp_path / "results")
    (src.parent / "report.md").write_text("# report\n")
    root = tmp_path / "baselines"
    assert baselines.find(root, results.load_run(src), "m") is None
    path, replaced = baselines.promote(src, root, "2026-12-01T06:00:00Z", "m")
    assert replaced is None and path == root / "m" / "tcg" / "nightly" / "run.json"
    assert path.read_text() == src.read_text() and (path.parent / "report.md").read_text() == "# report\n"
    info = json.loads((path.parent / "baseline.json").read_text())
    assert info["run_id"] == "20261201T000000Z" and info["source"] == str(src) and info["machine"] == "m"
    assert baselines.find(root, results.load_run(src), "m") == path


def test_a_taken_slot_is_replaced_only_when_asked(tmp_path):
    root = tmp_path / "baselines"
    first = write(stream_run({"iso": [1e5] * 3}, run_id="20261201T000000Z"), tmp_path / "r")
    second = write(stream_run({"iso": [2e5] * 3}, run_id="20261202T000000Z"), tmp_path / "r")
    baselines.promote(first, root, "t1", "m")
    with pytest.raises(baselines.BaselineError, match="already has a baseline \\(run 20261201T000000Z\\)"):
        baselines.promote(second, root, "t2", "m")
    path, replaced = baselines.promote(second, root, "t2", "m", replace=True)
    assert replaced == "20261201T000000Z" and results.load_run(path)["run_id"] == "20261202T000000Z"
    assert not (path.parent / "report.md").exists()  # the old run's report does not stay behind


def test_an_interrupted_run_is_not_a_baseline(tmp_path):
    src = write(stream_run({"iso": [1e5] * 3}, complete=False), tmp_path)
    with pytest.raises(baselines.BaselineError, match="incomplete"):
        baselines.promote(src, tmp_path / "b", "t", "m")
    assert not (tmp_path / "b").exists()


def test_a_file_that_is_not_a_run_is_refused(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text("{}")
    with pytest.raises(results.ResultsError):
        baselines.promote(bad, tmp_path / "b", "t", "m")


def test_the_default_dir_is_in_the_repository_unless_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.delenv(baselines.ENV_DIR, raising=False)
    assert baselines.default_dir(tmp_path) == tmp_path / "baselines"
    monkeypatch.setenv(baselines.ENV_DIR, str(tmp_path / "elsewhere"))
    assert baselines.default_dir(tmp_path) == tmp_path / "elsewhere"

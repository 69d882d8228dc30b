"""Run directories: naming, run.json/samples.csv contents, finding and loading stored runs (fixture dirs)."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from testbed.harness import results
from testbed.harness.results import ResultsError

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "harness" / "runs"
FIXTURE_RUN = FIXTURE_RUNS / "20261126T100000Z"


def test_run_dir_is_utc_timestamp_and_never_reused(tmp_path):
    now = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    first = results.new_run_dir(tmp_path / "results", now)
    second = results.new_run_dir(tmp_path / "results", now)
    assert first.name == "20261126T100000Z"
    assert second.name == "20261126T100000Z-2"
    assert first.is_dir() and second.is_dir()


def test_store_writes_header_cases_and_csv(tmp_path):
    run_dir = results.new_run_dir(tmp_path, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    store = results.RunStore(run_dir, {"started_at": "s", "metadata": {"hostname": "h"}})
    fixture = results.load_run(FIXTURE_RUN / "run.json")
    for case in fixture["cases"]:
        store.add_case(case)
    store.finish("e")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["format"] == 1 and run["run_id"] == "20260102T030405Z"
    assert run["metadata"] == {"hostname": "h"} and run["ended_at"] == "e"
    assert run["cases"] == fixture["cases"]
    with open(run_dir / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == results.SAMPLE_COLUMNS
    ok, failed = rows
    assert (ok["status"], ok["size"], ok["bytes"], ok["throughput_bps"]) == ("ok", "1448", "1234567890", "987534507.9")
    assert (ok["cpu_client_pct"], ok["cpu_server_pct"], ok["verified"]) == ("61.5", "55.25", "True")
    assert (ok["dm_c2s_frames"], ok["dm_s2c_frames"], ok["dm_drops"]) == ("1022000", "511000", "3")
    assert ok["crossed_device_model"] == "True" and ok["error"] == ""
    assert failed["status"] == "failed" and failed["bytes"] == "" and failed["dm_c2s_frames"] == ""
    assert "No route to host" in failed["error"]


def test_fixture_csv_matches_its_run_json():
    run = results.load_run(FIXTURE_RUN / "run.json")
    with open(FIXTURE_RUN / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    expected = [{k: "" if v is None else str(v) for k, v in results.sample_row(c).items()} for c in run["cases"]]
    assert rows == expected


def test_fixture_run_records_the_metadata_a_comparison_needs():
    run = results.load_run(FIXTURE_RUN / "run.json")
    meta = run["metadata"]
    for key in ("git", "hostname", "accel", "qemu", "libvirt", "python", "host_kernel", "guests"):
        assert key in meta
    assert run["topology"]["device_model"]["ports"] == ["a", "b"]
    assert run["playbook"]["text"].startswith("version: 1")
    assert run["started_at"] < run["ended_at"]


def test_resolve_run_accepts_dir_file_or_newest(tmp_path):
    assert results.resolve_run(FIXTURE_RUN, tmp_path) == FIXTURE_RUN / "run.json"
    assert results.resolve_run(FIXTURE_RUN / "run.json", tmp_path) == FIXTURE_RUN / "run.json"
    shutil.copytree(FIXTURE_RUN, tmp_path / "20261126T100000Z")
    shutil.copytree(FIXTURE_RUN, tmp_path / "20261127T090000Z")
    assert results.resolve_run(None, tmp_path) == tmp_path / "20261127T090000Z" / "run.json"


def test_resolve_run_errors(tmp_path):
    with pytest.raises(ResultsError, match="no runs under"):
        results.resolve_run(None, tmp_path / "nothing")
    with pytest.raises(ResultsError, match="no run at"):
        results.resolve_run(tmp_path / "x", tmp_path)


@pytest.mark.parametrize("content", ["{", "[]", '{"format": 2, "cases": []}', '{"format": 1}'])
def test_load_run_rejects_other_files(tmp_path, content):
    p = tmp_path / "run.json"
    p.write_text(content)
    with pytest.raises(ResultsError):
        results.load_run(p)


def test_run_json_is_valid_json_after_each_case(tmp_path):
    store = results.RunStore(results.new_run_dir(tmp_path, results.utc_now()), {"started_at": "t"})
    store.add_case({"test_name": "x", "status": "failed", "error": "boom"})
    run = json.loads(store.run_json.read_text())
    assert run["cases"][0]["error"] == "boom"
    assert run.get("ended_at") is None


def test_samples_carry_the_host_load_around_a_case_and_its_suspect_marks():
    case = {"status": "ok", "duration": 10.0, "isoperf": {"duration": 12.0},
            "tcp": {"client": {"rto_timeouts": 1}}, "host_load": {"before": {"1m": 1.0}, "after": {"1m": 3.5}}}
    row = results.sample_row(case, cpus=2)
    assert (row["host_load_before"], row["host_load_after"]) == (1.0, 3.5)
    assert row["suspect"] == "overrun RTO load"
    assert results.sample_row({"status": "ok"})["host_load_before"] == ""  # records before issue 10

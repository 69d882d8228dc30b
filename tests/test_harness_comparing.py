"""`fab compare`'s files and the nightly's comparison step (harness.comparing, compare_report, compare_figure)
on stored synthetic runs: no testbed needed."""

from __future__ import annotations

import io
import json

import pytest
from compare_helpers import stream_run, write
from rich.console import Console

from testbed.harness import baselines, compare, compare_report, comparing, results

BASE = {"legacy": [1e4, 1.02e4, 0.98e4], "iso": [1e5, 1.01e5, 0.99e5]}
DROPPED = {"legacy": [1e4, 1.01e4, 0.99e4], "iso": [0.6e5, 0.61e5, 0.59e5]}


def _console(terminal: bool = False) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=140, force_terminal=terminal, color_system=None), out


def test_compare_runs_writes_markdown_json_and_the_figure_into_new(tmp_path):
    base = write(stream_run(BASE, run_id="20261201T000000Z"), tmp_path)
    new = write(stream_run(DROPPED, run_id="20261202T000000Z"), tmp_path)
    console, out = _console()
    outcome = comparing.compare_runs(base, new, compare.Settings(), console)
    assert outcome.regressed
    names = sorted(p.name for p in outcome.files)
    assert names == ["compare.json", "compare.md", "compare.png", "compare.svg"]
    assert all(p.parent == new.parent for p in outcome.files)
    assert (new.parent / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (new.parent / "compare.svg").read_text()
    doc = json.loads((new.parent / "compare.json").read_text())
    assert doc["regressed"] and doc["regressions"] == 3 and doc["new_path"] == str(new)
    assert doc["settings"]["seed"] == 7  # NEW's recorded seed: the same pair always compares the same
    md = (new.parent / "compare.md").read_text()
    assert md.startswith("# Comparison: BASE 20261201T000000Z → NEW 20261202T000000Z")
    assert "| stream-64 size=64 conns=1 iso | msgs/s | 100,000 (3) | 60,000 (3) | -40.0 % |" in md
    assert "![change per case and metric](compare.png)" in md
    assert "threshold 10 %, alpha 0.05 (exact one-sided Mann–Whitney), at least 3 repeats a side, 95 % bootstrap" in md


def test_piped_output_is_the_whole_markdown_never_cut(tmp_path):
    base = write(stream_run(BASE, run_id="20261201T000000Z"), tmp_path)
    new = write(stream_run(DROPPED, run_id="20261202T000000Z"), tmp_path)
    console, out = _console()
    comparing.compare_runs(base, new, compare.Settings(), console, out_dir=tmp_path / "out", figure=False)
    text = out.getvalue()
    assert text.startswith((tmp_path / "out" / "compare.md").read_text())
    assert max(len(line) for line in text.splitlines()) > 140  # longer than the pipe width, and whole
    assert "…" not in text.replace(" … ", "")  # no cell cut short (the interval column's own "…" aside)
    assert not (tmp_path / "out" / "compare.png").exists()


def test_a_terminal_gets_the_rich_table_with_the_verdicts(tmp_path):
    base = write(stream_run(BASE, run_id="20261201T000000Z"), tmp_path)
    new = write(stream_run(DROPPED, run_id="20261202T000000Z"), tmp_path)
    console, out = _console(terminal=True)
    comparing.compare_runs(base, new, compare.Settings(), console, figure=False)
    text = out.getvalue()
    assert "BASE 20261201T000000Z → NEW 20261202T000000Z" in text and "regression" in text
    assert "REGRESSED: 3 regressions, 0 improvements" in text


def test_cases_in_one_run_and_failed_repeats_are_listed_in_the_markdown():
    base = stream_run({"legacy": [1e4] * 3, "iso": [1e5] * 3})
    new = stream_run({"iso": [1e5, None, 1e5, 1e5]}, run_id="20261202T000000Z")
    md = compare_report.markdown(compare.compare(base, new))
    assert "- only in BASE: stream-64 size=64 conns=1 legacy (3 ok, 0 failed)" in md
    assert "- failed repeats: stream-64 size=64 conns=1 iso (BASE 0 of 3, NEW 1 of 4; compared over the rest)" in md


def test_the_nightly_without_a_baseline_says_so_and_promotes_only_when_asked(tmp_path):
    new = write(stream_run(BASE), tmp_path / "results")
    root = tmp_path / "baselines"
    console, out = _console()
    outcome = comparing.nightly_step(new, root, compare.Settings(), console, "t", machine="ci")
    assert outcome.comparison is None and not outcome.regressed
    assert f"no baseline for ci/tcg/nightly under {root}" in out.getvalue()
    assert not root.exists() and not (new.parent / "compare.md").exists()
    comparing.nightly_step(new, root, compare.Settings(), console, "t", machine="ci", promote=True)
    assert baselines.find(root, results.load_run(new), "ci") == root / "ci" / "tcg" / "nightly" / "run.json"


def test_the_next_night_is_compared_with_the_baseline_and_a_drop_fails_it(tmp_path):
    root = tmp_path / "baselines"
    first = write(stream_run(BASE, run_id="20261201T000000Z"), tmp_path / "results")
    baselines.promote(first, root, "t", "ci")
    console, out = _console()
    same = write(stream_run(BASE, run_id="20261202T000000Z"), tmp_path / "results")
    assert not comparing.nightly_step(same, root, compare.Settings(), console, "t", "ci", figure=False).regressed
    worse = write(stream_run(DROPPED, run_id="20261203T000000Z"), tmp_path / "results")
    outcome = comparing.nightly_step(worse, root, compare.Settings(), console, "t", "ci", promote=True, figure=False)
    assert outcome.regressed and outcome.base_json == root / "ci" / "tcg" / "nightly" / "run.json"
    assert results.load_run(outcome.base_json)["run_id"] == "20261201T000000Z"  # --promote never replaces
    assert (worse.parent / "compare.md").is_file()


def test_base_may_be_the_word_baseline(tmp_path):
    root = tmp_path / "baselines"
    new = write(stream_run(BASE), tmp_path / "results")
    with pytest.raises(results.ResultsError, match="no baseline for ci/tcg/nightly"):
        comparing.resolve_base("baseline", new, root, "ci")
    baselines.promote(new, root, "t", "ci")
    assert comparing.resolve_base("baseline", new, root, "ci") == root / "ci" / "tcg" / "nightly" / "run.json"
    assert comparing.resolve_base(new.parent, new, root, "ci") == new

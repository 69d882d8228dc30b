"""A run's report files: report.md with the commit, host and figures; report.html one page that needs
nothing from elsewhere (figures embedded, names escaped); `fab report RUN` writes them for a stored run."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from test_harness_figures import case, run_of, size_sweep

from testbed.harness import figures, publish

REPO = Path(__file__).resolve().parents[1]
FIXTURE_RUN = REPO / "tests" / "fixtures" / "harness" / "runs" / "20261126T100000Z"


def test_report_md_has_the_commit_host_metadata_and_links_the_figures(tmp_path):
    out = publish.write(size_sweep(), tmp_path)
    md = out.report_md.read_text()
    assert "commit 0123456789ab (dirty), host benchhost (Test CPU 3000, 4 CPUs)" in md
    assert "## Metadata" in md and "- commit: 0123456789abcdef0123456789abcdef01234567 (dirty" in md
    assert "![per-cpu-vs-legacy](figures/per-cpu-vs-legacy.png)" in md
    # the figures come after the main table and before the sections under it
    assert md.index("| stream-t |") < md.index("## Figures") < md.index("## IsoStack vs legacy")
    assert sorted(p.name for p in out.figures) == sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert out.figure_error is None


def test_html_page_is_self_contained_with_every_figure_embedded(tmp_path):
    run = size_sweep()
    out = publish.write(run, tmp_path)
    page = out.report_html.read_text()
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(srcs) == len(pngs) == 2
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert {base64.b64decode(s.split(",", 1)[1]) for s in srcs} == {p.read_bytes() for p in pngs}
    assert not re.search(r"<(link|script|iframe)\b|url\(|@import", page)
    for text in ("Repeats: median", "IsoStack vs legacy in this run", "Metadata", "benchhost", "Test CPU 3000",
                 "0123456789abcdef0123456789abcdef01234567"):
        assert text in page


def test_names_from_a_playbook_cannot_put_markup_or_remote_images_in_the_page(tmp_path):
    evil = 'x<script>alert(1)</script> ![i](http://example.com/i.png) <img src="http://example.com/j.png">'
    run = run_of([case(name=evil, repeat=r) for r in range(2)])
    page = publish.write(run, tmp_path).report_html.read_text()
    assert "<script>" not in page and "<img src=\"http" not in page
    assert all(s.startswith("data:") for s in re.findall(r'\bsrc="([^"]*)"', page))
    assert "&lt;script&gt;" in page


def test_without_matplotlib_the_report_is_still_written_and_says_why(tmp_path, monkeypatch):
    def refuse(run, run_dir):
        raise figures.FiguresError("matplotlib is not installed")

    monkeypatch.setattr(figures, "draw", refuse)
    out = publish.write(size_sweep(), tmp_path)
    assert out.figures == [] and out.figure_error == "matplotlib is not installed"
    assert "Not drawn: matplotlib is not installed" in out.report_md.read_text()
    assert "Not drawn: matplotlib is not installed" in out.report_html.read_text()


def test_outputs_name_the_page_the_markdown_and_each_png(tmp_path):
    publish.write(size_sweep(), tmp_path)
    assert publish.outputs(tmp_path) == [
        f"report: {tmp_path / 'report.html'}", f"report.md: {tmp_path / 'report.md'}",
        f"figure: {tmp_path / 'figures' / 'per-cpu-vs-legacy.png'}",
        f"figure: {tmp_path / 'figures' / 'stream-t-throughput-vs-size.png'}"]


def _fab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "fab"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ})


def test_fab_report_writes_the_files_of_a_stored_run(tmp_path):
    run_dir = tmp_path / "20261126T100000Z"
    shutil.copytree(FIXTURE_RUN, run_dir)
    r = _fab("report", str(run_dir))
    assert r.returncode == 0, r.stderr
    assert f"report: {run_dir / 'report.html'}" in r.stdout
    assert (run_dir / "figures" / "stream-throughput-vs-size.png").is_file()
    assert "commit 0123456789ab" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "run.json").read_text()) == json.loads((FIXTURE_RUN / "run.json").read_text())
    latest = _fab("report", "latest", "--results-dir", str(tmp_path))
    assert latest.returncode == 0 and f"report.md: {run_dir / 'report.md'}" in latest.stdout


def test_fab_report_without_a_run_is_a_clear_error(tmp_path):
    r = _fab("report", str(tmp_path / "none"))
    assert r.returncode == 2 and "report: no run at" in r.stderr and "Traceback" not in r.stderr
    r = _fab("report", "--help")
    assert r.returncode == 2 and "usage: fab report RUN" in r.stderr

"""`fab compare`, `fab promote-baseline` and the nightly's comparison step: read the runs, find the baseline,
judge (compare.py), print, and write compare.md, compare.json and the figure. The fab tasks stay thin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from testbed.harness import baselines, compare, compare_figure, compare_report, repeats, results

MD_FILE = "compare.md"
JSON_FILE = "compare.json"
BASELINE_WORD = "baseline"  # `fab compare baseline NEW`: BASE is NEW's stored baseline


@dataclass
class Outcome:
    """What a comparison left: the verdicts (None when there was nothing to compare with) and the files."""

    comparison: compare.Comparison | None
    base_json: Path | None
    files: list[Path] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return bool(self.comparison and self.comparison.regressed)


def resolve_base(base: str | Path, new_json: Path, baselines_root: Path, machine: str | None) -> Path:
    """BASE as given, or NEW's baseline when BASE is the word `baseline`; ResultsError names what is missing."""
    if str(base) != BASELINE_WORD:
        return results.resolve_run(base, Path("."))
    run = results.load_run(new_json)
    found = baselines.find(baselines_root, run, machine)
    if found is None:
        raise results.ResultsError(f"no baseline for {baselines.slot(run, machine)} under {baselines_root} "
                                   "(fab promote-baseline RUN stores one)")
    return found


def compare_runs(base_json: Path, new_json: Path, settings: compare.Settings, console: Console,
                 out_dir: Path | None = None, figure: bool = True) -> Outcome:
    """Compare two stored runs; write compare.md, compare.json (and compare.png/.svg) into out_dir (default
    NEW's run directory), print the table; ResultsError when a run cannot be read. The bootstrap is seeded
    with NEW's recorded seed, so the same pair always gets the same intervals."""
    base, new = results.load_run(base_json), results.load_run(new_json)
    settings = replace(settings, seed=repeats.settings(new)[0])  # NEW's: a stored pair compares the same
    c = compare.compare(base, new, settings)
    out = out_dir or new_json.parent
    out.mkdir(parents=True, exist_ok=True)
    files = compare_figure.draw(c, out) if figure else []
    png = next((p.name for p in files if p.suffix == ".png"), None)
    doc = c.to_dict() | {"base_path": str(base_json), "new_path": str(new_json), "figures": [p.name for p in files]}
    (out / JSON_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    (out / MD_FILE).write_text(compare_report.markdown(c, png))
    compare_report.print_comparison(c, console, png)
    files = [out / MD_FILE, out / JSON_FILE, *files]
    console.print(escape(f"compare: {out}/ " + ", ".join(p.name for p in files)), highlight=False, soft_wrap=True)
    return Outcome(c, base_json, files)


def nightly_step(new_json: Path, baselines_root: Path, settings: compare.Settings, console: Console,
                 promoted_at: str, machine: str | None = None, promote: bool = False,
                 figure: bool = True) -> Outcome:
    """After the nightly run: compare with its baseline when there is one; on the first night say there is
    none, and store this run as the baseline only when asked (`promote`)."""
    run = results.load_run(new_json)
    where = baselines.slot(run, machine)
    base_json = baselines.find(baselines_root, run, machine)
    if base_json is not None:
        console.print(escape(f"baseline {where}: {base_json}"), highlight=False)
        return compare_runs(base_json, new_json, settings, console, figure=figure)
    console.print(escape(f"no baseline for {where} under {baselines_root}: nothing to compare with"),
                  style="yellow", highlight=False)
    if promote:
        path, _ = baselines.promote(new_json, baselines_root, promoted_at, machine)
        console.print(escape(f"promoted {run.get('run_id')} to the baseline: {path}"), highlight=False)
    else:
        console.print("(fab promote-baseline RUN, or the nightly with --promote, stores one)", highlight=False)
    return Outcome(None, None)

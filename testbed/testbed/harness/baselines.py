"""Stored baseline runs: one per machine kind, accelerator and playbook, the run a new run is compared with.

    <baselines dir>/<machine kind>/<accel>/<playbook>/run.json      the promoted run, unchanged
                                                     /report.md     its report, when the run had one
                                                     /baseline.json what was promoted, from where, when

Why per machine kind and accel: a figure from a 2-core TCG host says nothing about a 64-core KVM host, so a
run is only ever compared with a baseline measured where it was. The machine kind is the run's CPU model
and CPU count (`intel-xeon-processor-2cpu`), or a name given for a fleet of alike machines (CI runners
whose CPU model varies: `--machine github-hosted` or $ISOSTACK_MACHINE). The baselines dir is `baselines/`
in the repository (committed, so CI finds them), or --baselines-dir / $ISOSTACK_BASELINES_DIR.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from testbed.harness import results

ENV_DIR = "ISOSTACK_BASELINES_DIR"
ENV_MACHINE = "ISOSTACK_MACHINE"
INFO_FILE = "baseline.json"
REPORT_FILE = "report.md"


class BaselineError(RuntimeError):
    pass


def slug(text: str) -> str:
    """A path component from free text (a CPU model, a playbook name): lower case, [a-z0-9-] only, so a
    run's metadata cannot name a path outside the baselines dir."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_kind(run: dict, name: str | None = None) -> str:
    """`name` (or $ISOSTACK_MACHINE) when given, else the CPU model and count from the run's metadata."""
    name = name or os.environ.get(ENV_MACHINE)
    if name:
        return slug(name)
    meta = run.get("metadata") or {}
    count = meta.get("host_cpu_count")
    return f"{slug(meta.get('host_cpu_model') or 'unknown cpu')}-{count if isinstance(count, int) else 'x'}cpu"


def accel_of(run: dict) -> str:
    return slug(str((run.get("metadata") or {}).get("accel") or (run.get("topology") or {}).get("accel")
                    or "unknown"))


@dataclass(frozen=True)
class Slot:
    """Where a run's baseline lives: machine kind, accel and playbook."""

    machine: str
    accel: str
    playbook: str

    def path(self, root: Path) -> Path:
        return root / self.machine / self.accel / self.playbook

    def __str__(self) -> str:
        return f"{self.machine}/{self.accel}/{self.playbook}"


def slot(run: dict, machine: str | None = None) -> Slot:
    return Slot(machine_kind(run, machine), accel_of(run), slug(str((run.get("playbook") or {}).get("name"))))


def default_dir(repo_root: Path) -> Path:
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else repo_root / "baselines"


def find(root: Path, run: dict, machine: str | None = None) -> Path | None:
    """The baseline run.json for `run`'s slot, or None when none was promoted."""
    path = slot(run, machine).path(root) / results.RUN_FILE
    return path if path.is_file() else None


def promote(run_json: Path, root: Path, promoted_at: str, machine: str | None = None,
            replace: bool = False) -> tuple[Path, str | None]:
    """Copy a complete run into its slot; returns (the baseline's run.json, the run_id it replaced or None).

    Refuses an interrupted run (its figures are partial) and, without `replace`, a slot that is taken.
    """
    run = results.load_run(run_json)
    if not run.get("ended_at"):
        raise BaselineError(f"{run_json} is incomplete (interrupted or still running): not a baseline")
    where = slot(run, machine)
    dest = where.path(root)
    old = dest / results.RUN_FILE
    replaced = None
    if old.is_file():
        try:
            replaced = str(results.load_run(old).get("run_id"))
        except results.ResultsError:
            replaced = "(unreadable)"
        if not replace:
            raise BaselineError(f"{where} already has a baseline (run {replaced}); --replace replaces it")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_json, old)
    report = run_json.parent / REPORT_FILE
    if report.is_file():
        shutil.copyfile(report, dest / REPORT_FILE)
    elif (dest / REPORT_FILE).exists():
        (dest / REPORT_FILE).unlink()
    info = {"format": 1, "machine": where.machine, "accel": where.accel, "playbook": where.playbook,
            "run_id": run.get("run_id"), "source": str(run_json), "promoted_at": promoted_at,
            "commit": ((run.get("metadata") or {}).get("git") or {}).get("commit"), "replaced": replaced}
    (dest / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return old, replaced

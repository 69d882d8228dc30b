"""Run directories: results/<UTC timestamp>/run.json (everything) and samples.csv (one row per case).

run.json is rewritten after every case, so an interrupted run still leaves what it measured.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from testbed.harness import suspects
from testbed.harness.playbook import stack_label

RUN_FORMAT = 1
RUN_FILE = "run.json"
SAMPLES_FILE = "samples.csv"

SAMPLE_COLUMNS = [
    "test_name",
    "test",
    "stack",
    "placement",
    "size",
    "connections",
    "repeat",
    "status",
    "duration_s",
    "bytes",
    "throughput_bps",
    "messages_per_s",
    "cpu_client_pct",
    "cpu_server_pct",
    "verified",
    "dm_client_port",
    "dm_server_port",
    "dm_c2s_frames",
    "dm_c2s_bytes",
    "dm_s2c_frames",
    "dm_s2c_bytes",
    "dm_drops",
    "crossed_device_model",
    "send_loop",
    "client_out_segs",
    "client_retrans_segs",
    "client_rto_timeouts",
    "error",
    "host_load_before",
    "host_load_after",
    "suspect",
]


class ResultsError(RuntimeError):
    pass


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_dir(results_dir: Path, now: datetime) -> Path:
    """results/<YYYYmmddTHHMMSSZ>, with -2, -3... if two runs start in the same second."""
    results_dir.mkdir(parents=True, exist_ok=True)
    base = now.strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        path = results_dir / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ResultsError(f"cannot create a run directory under {results_dir}")


class RunStore:
    """One run directory being written."""

    def __init__(self, path: Path, header: dict, run: dict | None = None):
        """A new run directory with `header`; or (`run`) an existing run reopened to be resumed, its
        samples.csv rewritten from its records."""
        self.path = path
        self.run = run if run is not None else {"format": RUN_FORMAT, "run_id": path.name, **header, "cases": []}
        cpus = (self.run.get("metadata") or {}).get("host_cpu_count")
        with open(path / SAMPLES_FILE, "w", newline="") as f:
            csv.writer(f).writerow(SAMPLE_COLUMNS)
            for case in self.run["cases"]:
                csv.writer(f).writerow([sample_row(case, cpus).get(c, "") for c in SAMPLE_COLUMNS])
        self._write()

    @property
    def run_json(self) -> Path:
        return self.path / RUN_FILE

    def add_case(self, case: dict) -> None:
        self.run["cases"].append(case)
        cpus = (self.run.get("metadata") or {}).get("host_cpu_count")
        with open(self.path / SAMPLES_FILE, "a", newline="") as f:
            csv.writer(f).writerow([sample_row(case, cpus).get(c, "") for c in SAMPLE_COLUMNS])
        self._write()

    def finish(self, ended_at: str) -> None:
        self.run["ended_at"] = ended_at
        self._write()

    def interrupt(self, at: str, reason: str) -> None:
        """The run stopped before its last case (Ctrl-C, an error): say so; `ended_at` stays null."""
        self.run["interrupted"] = {"at": at, "reason": reason, "cases_done": len(self.run["cases"])}
        self._write()

    def _write(self) -> None:
        tmp = self.run_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.run, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, self.run_json)


def stack_column(case: dict) -> str:
    """"legacy", "iso", "iso+locks", "iso×2" (two isostackd instances), "legacy@irq" (the placement, when the
    playbook ran more than one), "legacy→iso" (the server on IsoStack), "iso(preload)" (through the C shim),
    "iperf3 legacy" (a program other than isoperf): the report's stack column, which also groups the repeats of
    a case. Records from before the program/frontend axes are isoperf's, through the Python front-end."""
    n = case.get("instances")
    n = n if isinstance(n, int) and not isinstance(n, bool) else 1
    mode = case.get("placement_mode") if case.get("placement_axis") is True else None
    server = case.get("server_stack")
    program, frontend = case.get("program"), case.get("frontend")
    return stack_label(str(case.get("stack")), bool(case.get("locks")), n, mode if isinstance(mode, str) else None,
                       server if isinstance(server, str) else "legacy",
                       program if isinstance(program, str) else "isoperf",
                       frontend if isinstance(frontend, str) else None)


def legacy_column(case: dict) -> str:
    """The stack column of the legacy case a case is compared with: both ends on kernel sockets, the same
    placement (a fair comparison keeps the application and the NIC's interrupts where they were for the stack)."""
    return stack_column({**case, "stack": "legacy", "locks": False, "instances": 1, "server_stack": "legacy",
                         "frontend": "kernel"})


def sample_row(case: dict, cpus: int | None = None) -> dict:
    """Flatten one case record into the CSV columns (empty where a value does not exist); `cpus`, the host's,
    scales the load mark (suspects.load_moved)."""
    r = case.get("isoperf") or {}
    dm = case.get("device_model") or {}
    delta = dm.get("delta") or {}
    cport, sport = dm.get("client_port"), dm.get("server_port")
    c2s, s2c = delta.get(cport) or {}, delta.get(sport) or {}
    cpu = r.get("cpu") or {}
    drops = sum(sum(p.get("drops", {}).values()) for p in delta.values()) if delta else ""
    tcp = (case.get("tcp") or {}).get("client") or {}
    return {
        "test_name": case.get("test_name"),
        "test": case.get("test"),
        "stack": stack_column(case),
        "placement": case.get("placement_mode") or "",
        "size": case.get("size"),
        "connections": case.get("connections"),
        "repeat": case.get("repeat"),
        "status": case.get("status"),
        "duration_s": r.get("duration", ""),
        "bytes": r.get("bytes", ""),
        "throughput_bps": r.get("throughput_bps", ""),
        "messages_per_s": r.get("messages_per_s", ""),
        "cpu_client_pct": (cpu.get("client") or {}).get("all", ""),
        "cpu_server_pct": (cpu.get("server") or {}).get("all", ""),
        "verified": "" if r.get("verified") is None else r.get("verified"),
        "dm_client_port": cport or "",
        "dm_server_port": sport or "",
        "dm_c2s_frames": c2s.get("from_guest_frames", ""),
        "dm_c2s_bytes": c2s.get("from_guest_bytes", ""),
        "dm_s2c_frames": s2c.get("from_guest_frames", ""),
        "dm_s2c_bytes": s2c.get("from_guest_bytes", ""),
        "dm_drops": drops,
        "crossed_device_model": "" if dm.get("crossed") is None else dm.get("crossed"),
        "send_loop": r.get("send_loop") or "",
        "client_out_segs": tcp.get("out_segs", ""),
        "client_retrans_segs": tcp.get("retrans_segs", ""),
        "client_rto_timeouts": tcp.get("rto_timeouts", ""),
        "error": case.get("error") or "",
        "host_load_before": _load_1m(case, "before"),
        "host_load_after": _load_1m(case, "after"),
        "suspect": " ".join(suspects.case_marks(case, cpus if isinstance(cpus, int) else None)),
    }


def _load_1m(case: dict, when: str) -> float | str:
    """The host's 1-minute load average before or after the case ("" where not read)."""
    value = ((case.get("host_load") or {}).get(when) or {}).get("1m")
    return value if isinstance(value, (int, float)) else ""


def case_label(case: dict) -> str:
    """A record's case as playbook.Case.label names it (`rr-64 iso size=64 conns=1 #2`): how `--resume`
    finds the cases of `order.cases` that already ran."""
    repeat = case.get("repeat")
    n = repeat + 1 if isinstance(repeat, int) else repeat
    return f"{case.get('test_name')} {stack_column(case)} size={case.get('size')} conns={case.get('connections')} #{n}"


def incomplete(run: dict, run_dir: Path | None = None) -> str | None:
    """Why a run is incomplete (None when it is not): it has no `ended_at` (interrupted, killed, or still
    running), with how many of its planned cases ran and how to continue it."""
    if run.get("ended_at"):
        return None
    planned = (run.get("order") or {}).get("cases")
    done = len(run.get("cases") or [])
    counted = f"{done} of {len(planned)} cases ran" if isinstance(planned, list) else f"{done} cases ran"
    stop = run.get("interrupted")
    why = (f"interrupted at {stop.get('at')}: {stop.get('reason')}" if isinstance(stop, dict)
           else "stopped without a word (killed, crashed) or still running")
    where = run_dir if run_dir is not None else run.get("run_id")
    return f"incomplete: {counted}, {why}; continue it with `fab run-benchmark --resume {where}`"


def failed_note(run: dict, run_dir: Path | None = None) -> str | None:
    """For a complete run with failed cases: that `--resume` runs them again (None otherwise)."""
    failed = sum(1 for c in run.get("cases") or [] if c.get("status") != "ok")
    if not run.get("ended_at") or not failed:
        return None
    where = run_dir if run_dir is not None else run.get("run_id")
    return f"{failed} case(s) failed; `fab run-benchmark --resume {where}` runs them again"


def resolve_run(path: str | Path | None, results_dir: Path) -> Path:
    """A run.json from a run dir, a run.json path, or (None) the newest run under results_dir."""
    if path is None:
        runs = sorted(p for p in results_dir.glob("*/" + RUN_FILE)) if results_dir.is_dir() else []
        if not runs:
            raise ResultsError(f"no runs under {results_dir}")
        return runs[-1]
    p = Path(path)
    if p.is_dir():
        p = p / RUN_FILE
    if not p.is_file():
        raise ResultsError(f"no run at {path} ({p} does not exist)")
    return p


def load_run(run_json: Path) -> dict:
    try:
        run = json.loads(run_json.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"cannot read {run_json}: {e}") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or not isinstance(run.get("cases"), list):
        raise ResultsError(f"{run_json} is not a run.json of format {RUN_FORMAT}")
    return run

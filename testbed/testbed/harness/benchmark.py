"""`fab run-benchmark`: a whole run, from the playbook and the testbed's state to results/<run>/.

run_benchmark connects to the testbed the state directory describes; execute (shared with the tests, which
hand it local shells) checks, uploads, opens the run directory with the metadata, runs the cases and writes
the report, its figures and its HTML page (publish). An interrupted run keeps its finished cases (run.json
is rewritten after each) and says so; resume_benchmark / resume continue it from its recorded playbook, order
and seed.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from testbed import state
from testbed.harness import (
    dmstats,
    guest_tuning,
    metadata,
    order,
    overrides,
    publish,
    remote,
    repeats,
    results,
    stats,
)
from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.placement_cmd import DATA_INTERFACE
from testbed.harness.playbook import PEER, Case, Playbook, PlaybookError, parse_playbook
from testbed.harness.progress import is_bad, run_playbook
from testbed.harness.remote import RemoteError, Shell
from testbed.harness.runner import Runner

REPO_ROOT = Path(__file__).resolve().parents[3]


class RunInterrupted(HarnessError):
    """Ctrl-C during the cases: the run directory keeps what ran and is marked interrupted."""

    def __init__(self, message: str, run_json: Path):
        super().__init__(message)
        self.run_json = run_json


def run_benchmark(
    playbook_path: str | Path, state_dir: str | Path | None, results_dir: str | Path, console: Console | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> tuple[Path, int]:
    """`fab run-benchmark`: load everything (`sets`: the `--set KEY=VALUE` overrides), connect to the guests,
    run, store; returns (run.json, failures)."""
    console = console or Console()
    try:
        playbook = overrides.load(playbook_path, sets)
    except ValueError as e:
        raise HarnessError(str(e)) from None
    return _on_testbed(playbook, state_dir, console, lambda runner, used, datapath: execute(
        runner, playbook, Path(results_dir), used, console, datapath))


def resume_benchmark(run_path: str | Path, state_dir: str | Path | None,
                     console: Console | None = None) -> tuple[Path, int]:
    """`fab run-benchmark --resume RUN`: continue a stored run on the testbed; returns (run.json, failures)."""
    console = console or Console()
    try:
        run_json = results.resolve_run(run_path, Path(run_path))
        run = results.load_run(run_json)
    except results.ResultsError as e:
        raise HarnessError(str(e)) from None
    playbook = recorded_playbook(run, run_json)
    return _on_testbed(playbook, state_dir, console, lambda runner, used, datapath: resume(
        runner, run_json, used, console, datapath))


def _on_testbed(playbook: Playbook, state_dir: str | Path | None, console: Console,
                go: Callable[[Runner, list[str], str | None], tuple[Path, int]]) -> tuple[Path, int]:
    """Connect to the testbed of the state dir and hand `go` the runner, the guests the playbook uses and the
    device model's datapath; the SSH connections are closed afterwards."""
    sdir = state.state_dir(state_dir)
    try:
        topology = state.Topology.load(state.topology_path(sdir))
    except (FileNotFoundError, ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise HarnessError(f"cannot use the testbed in {sdir}: {e}") from None

    shells: dict[str, Shell] = {g.name: _shell(g.name, topology.ssh_endpoint(g)) for g in topology.guests}
    socket_dir = topology.device_model.socket_dir
    runner = Runner(topology, shells, GuestLayout(), lambda: dmstats.read_stats(socket_dir), console)
    try:
        used = sorted({g.name for case in playbook.cases() for g in runner.pair(case)})
        return go(runner, used, dmstats.read_datapath(socket_dir))
    finally:
        for shell in shells.values():
            shell.close()


def _shell(name: str, ssh: state.SshEndpoint) -> Shell:
    """A guest's shell over SSH with its own endpoint and credentials (a merged topology's may differ)."""
    return remote.FabricShell(name, ssh.host, ssh.port, ssh.user, ssh.key)


def execute(
    runner: Runner, playbook: Playbook, results_dir: Path, guests: list[str], console: Console,
    device_model_datapath: str | None = None,
) -> tuple[Path, int]:
    """Prepare the guests, open the run directory, run the cases in the playbook's order; shared by the CLI
    and tests. The seed (the playbook's, or one drawn now) shuffles the order and seeds the bootstrap
    intervals; both are recorded, so the run and its report can be reproduced."""
    started = results.utc_now()
    seed = playbook.seed if playbook.seed is not None else secrets.randbelow(2**32)
    cases = order.arrange(playbook.cases(), playbook.order, seed)
    runner.check_playbook(playbook)
    guest_info = _prepare(runner, playbook, guests, console)
    host = metadata.host_metadata(REPO_ROOT)
    host["accel"] = runner.topology.accel
    host["icount"] = runner.topology.icount  # QEMU's -icount (testbed.icount), None: guest time is the host's
    host["guests"] = guest_info
    host["guest_image"] = runner.topology.image
    host["device_model_datapath"] = device_model_datapath
    store = results.RunStore(
        results.new_run_dir(results_dir, started),
        {
            "started_at": results.iso(started),
            "ended_at": None,
            "metadata": host,
            "topology": dataclasses.asdict(runner.topology),
            "playbook": {
                "name": playbook.name,
                "path": str(playbook.path),
                "sha256": playbook.sha256,  # of `text`: the resolved form when overrides were given
                "text": playbook.text,
                "overrides": list(playbook.overrides),
                "source_sha256": playbook.source_sha256,
            },
            "order": {"order": playbook.order, "seed": seed, "interval_s": playbook.interval_s,
                      "cases": order.describe(cases)},
            "statistics": {"seed": seed, "resamples": stats.RESAMPLES, "confidence": stats.CONFIDENCE,
                           "cases": None},
        },
    )
    return _run_cases(runner, playbook, store, cases, console, done=0)


def _prepare(runner: Runner, playbook: Playbook, guests: list[str], console: Console) -> dict:
    """Build and upload what the guests need; per guest its metadata with its sysctls and NIC offloads."""
    with console.status("preparing guests"):
        if any("iso" in (case.stack, case.server_stack) for case in playbook.cases()):
            runner.check_native()  # before the upload, so the .so files travel with the packages
        try:
            guest_info = runner.prepare(guests)
        except RemoteError as e:
            raise HarnessError(f"cannot prepare the guests: {e}") from None
    with console.status("reading the guests' sysctls and NIC offloads"):
        for name, info in guest_info.items():
            peer = runner.topology.peer if name == PEER else None
            info["tuning"] = guest_tuning.read(runner.shells[name], peer.interface if peer else DATA_INTERFACE)
    for name, info in guest_info.items():
        info.update(where(runner.topology, name))
    return guest_info


def where(topology: state.Topology, name: str) -> dict:
    """Where a guest of the run runs: its host (None: this one), libvirt URI and SSH endpoint, for run.json."""
    if name == PEER:
        return {"host": None, "uri": None, "ssh": None}
    g = topology.guest(name)
    ssh = topology.ssh_endpoint(g)
    return {"host": topology.guest_host(g), "uri": topology.guest_uri(g), "ssh": f"{ssh.user}@{ssh.host}:{ssh.port}"}


def _run_cases(runner: Runner, playbook: Playbook, store: results.RunStore, cases: list[Case], console: Console,
               done: int) -> tuple[Path, int]:
    """Run `cases` into the store, then its statistics, `ended_at` and report.md; an interruption (Ctrl-C, an
    error out of the runner) is recorded in run.json and raised with the command that continues the run."""
    try:
        run_playbook(runner, playbook.name, cases, store, console, playbook.interval_s, done=done)
    except KeyboardInterrupt:
        store.interrupt(results.iso(results.utc_now()), "Ctrl-C")
        raise RunInterrupted(_stopped(store, "was interrupted"), store.run_json) from None
    except Exception as e:
        store.interrupt(results.iso(results.utc_now()), f"{type(e).__name__}: {e}")
        raise HarnessError(f"{e}; {_stopped(store, 'stopped')}") from None
    store.run["statistics"]["cases"] = [cs.to_dict() for cs in repeats.case_statistics(store.run)]
    store.finish(results.iso(results.utc_now()))
    publish.write(store.run, store.path)  # report.md, the figures, report.html
    return store.run_json, sum(is_bad(record) for record in store.run["cases"])


def _stopped(store: results.RunStore, what: str) -> str:
    planned = len(store.run["order"]["cases"])
    return (f"the run {what} after {len(store.run['cases'])} of {planned} cases; its finished cases are in"
            f" {store.run_json}; continue it with `fab run-benchmark --resume {store.path}`")


def recorded_playbook(run: dict, run_json: Path) -> Playbook:
    """The playbook a stored run ran, from its recorded text (the resolved form, overrides applied): the file
    may have changed since."""
    pb = run.get("playbook") or {}
    if not isinstance(pb.get("text"), str):
        raise HarnessError(f"{run_json}: no playbook text recorded: cannot resume it")
    try:
        playbook = parse_playbook(pb["text"], pb.get("path") or "<recorded playbook>")
    except PlaybookError as e:
        raise HarnessError(f"{run_json}: its recorded playbook no longer validates: {e}") from None
    return dataclasses.replace(playbook, overrides=tuple(pb.get("overrides") or ()),
                               source_sha256=pb.get("source_sha256"))


def plan_resume(run: dict, playbook: Playbook) -> tuple[list[Case], list[dict]]:
    """What a resumed run still has to do: the cases of the recorded order without a successful record, in
    that order, and the failed records they replace. The order is rebuilt from the recorded playbook and seed
    and must give the recorded case labels."""
    recorded = run.get("order") or {}
    seed = recorded.get("seed")
    if not isinstance(recorded.get("cases"), list) or seed is None:
        raise HarnessError("the run has no recorded run order and seed (order.cases, order.seed: runs before issue"
                           " 10 lack them): it cannot be resumed in its order")
    try:
        cases = order.arrange(playbook.cases(), recorded.get("order") or playbook.order, seed)
    except ValueError as e:
        raise HarnessError(f"cannot rebuild the run order: {e}") from None
    if order.describe(cases) != recorded.get("cases"):
        raise HarnessError("the recorded playbook and seed do not give the recorded run order (order.cases): "
                           "this run cannot be resumed")
    ok = {results.case_label(r) for r in run["cases"] if r.get("status") == "ok"}
    todo = [c for c in cases if c.label not in ok]
    labels = {c.label for c in todo}
    return todo, [r for r in run["cases"] if results.case_label(r) in labels]


def resume(runner: Runner, run_json: Path, guests: list[str], console: Console,
           device_model_datapath: str | None = None) -> tuple[Path, int]:
    """Continue the run of `run_json` with its recorded playbook, order, seed and metadata: run the cases
    that have no successful record (not run yet, or failed: a guest crash fails the cases after it), keeping
    the failed records they replace under `replaced`. Shared by the CLI and tests."""
    try:
        run = results.load_run(run_json)
    except results.ResultsError as e:
        raise HarnessError(str(e)) from None
    playbook = recorded_playbook(run, run_json)
    todo, replaced = plan_resume(run, playbook)
    if not todo:
        raise HarnessError(f"{run_json}: every case of the run succeeded: nothing to resume")
    runner.check_playbook(playbook)
    guest_info = _prepare(runner, playbook, guests, console)
    started = results.utc_now()
    host = metadata.host_metadata(REPO_ROOT)
    first = run.get("metadata") or {}
    changed = _changes(first, host, guest_info)
    for line in changed:
        console.log(f"[yellow]resume: {line}[/yellow]")
    run["cases"] = [r for r in run["cases"] if not any(r is x for x in replaced)]
    run.setdefault("replaced", []).extend(replaced)
    run.setdefault("resumes", []).append({
        "started_at": results.iso(started),
        "cases_to_run": len(todo),
        "replaced": len(replaced),
        "git": host.get("git"),
        "package_sha256": {g: (i or {}).get("package_sha256") for g, i in guest_info.items()},
        "device_model_datapath": device_model_datapath,
        "changed": changed,
    })
    run["ended_at"] = None
    run["interrupted"] = None
    store = results.RunStore(run_json.parent, {}, run=run)
    done = len(run["order"]["cases"]) - len(todo)
    console.log(f"resuming {run.get('run_id')}: {done} case(s) done, {len(todo)} to run"
                + (f" ({len(replaced)} failed before)" if replaced else ""))
    return _run_cases(runner, playbook, store, todo, console, done=done)


def _changes(first: dict, host: dict, guest_info: dict) -> list[str]:
    """What differs from when the run started (the commit, the uploaded packages): the resumed cases were then
    measured with other code, which the report's reader must know."""
    out = []
    before, now = (first.get("git") or {}).get("commit"), (host.get("git") or {}).get("commit")
    if before != now:
        out.append(f"the commit changed: {before} then, {now} now")
    for name, info in guest_info.items():
        was = ((first.get("guests") or {}).get(name) or {}).get("package_sha256")
        if was != (info or {}).get("package_sha256"):
            out.append(f"{name}: the uploaded guest packages changed (package_sha256)")
    return out

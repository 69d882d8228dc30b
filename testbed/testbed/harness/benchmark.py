"""`fab run-benchmark`: a whole run, from the playbook and the testbed's state to results/<run>/.

run_benchmark connects to the testbed the state directory describes; execute (shared with the tests, which
hand it local shells) checks, uploads, opens the run directory with the metadata, runs the cases and writes
the report, its figures and its HTML page (publish).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

from rich.console import Console

from testbed import state
from testbed.harness import dmstats, guest_tuning, metadata, order, publish, remote, repeats, results, stats
from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.placement_cmd import DATA_INTERFACE
from testbed.harness.playbook import PEER, Playbook, load_playbook
from testbed.harness.progress import run_playbook
from testbed.harness.remote import RemoteError, Shell
from testbed.harness.runner import Runner

REPO_ROOT = Path(__file__).resolve().parents[3]


def run_benchmark(
    playbook_path: str | Path, state_dir: str | Path | None, results_dir: str | Path, console: Console | None = None
) -> tuple[Path, int]:
    """`fab run-benchmark`: load everything, connect to the guests, run, store; returns (run.json, failures)."""
    console = console or Console()
    try:
        playbook = load_playbook(playbook_path)
    except ValueError as e:
        raise HarnessError(str(e)) from None
    sdir = state.state_dir(state_dir)
    try:
        topology = state.Topology.load(state.topology_path(sdir))
    except (FileNotFoundError, ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise HarnessError(f"cannot use the testbed in {sdir}: {e}") from None

    shells: dict[str, Shell] = {
        g.name: remote.FabricShell(g.name, g.ssh_host, g.ssh_port, topology.ssh_user, topology.ssh_key)
        for g in topology.guests
    }
    socket_dir = topology.device_model.socket_dir
    runner = Runner(topology, shells, GuestLayout(), lambda: dmstats.read_stats(socket_dir), console)
    try:
        used = sorted({g.name for case in playbook.cases() for g in runner.pair(case)})
        return execute(runner, playbook, Path(results_dir), used, console, dmstats.read_datapath(socket_dir))
    finally:
        for shell in shells.values():
            shell.close()


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
    with console.status("preparing guests"):
        if any(case.stack == "iso" for case in playbook.cases()):
            runner.check_native()  # before the upload, so the .so files travel with the packages
        try:
            guest_info = runner.prepare(guests)
        except RemoteError as e:
            raise HarnessError(f"cannot prepare the guests: {e}") from None
    host = metadata.host_metadata(REPO_ROOT)
    host["accel"] = runner.topology.accel
    host["icount"] = runner.topology.icount  # QEMU's -icount (testbed.icount), None: guest time is the host's
    with console.status("reading the guests' sysctls and NIC offloads"):
        for name, info in guest_info.items():
            peer = runner.topology.peer if name == PEER else None
            info["tuning"] = guest_tuning.read(runner.shells[name], peer.interface if peer else DATA_INTERFACE)
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
                "sha256": playbook.sha256,
                "text": playbook.text,
            },
            "order": {"order": playbook.order, "seed": seed, "interval_s": playbook.interval_s,
                      "cases": order.describe(cases)},
            "statistics": {"seed": seed, "resamples": stats.RESAMPLES, "confidence": stats.CONFIDENCE,
                           "cases": None},
        },
    )
    bad = run_playbook(runner, playbook.name, cases, store, console, playbook.interval_s)
    store.run["statistics"]["cases"] = [cs.to_dict() for cs in repeats.case_statistics(store.run)]
    store.finish(results.iso(results.utc_now()))
    publish.write(store.run, store.path)  # report.md, the figures, report.html
    return store.run_json, bad

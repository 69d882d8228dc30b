"""The benchmark loop: for each case of a playbook, run isoperf between two guests and record it.

Per case: start a one-session `isoperf server` on the server guest (bound to its data IP), snapshot the
device-model counters, run the client on the other guest against that data IP, snapshot again, store the
isoperf JSON with the per-port deltas. The package is uploaded once per run (skipped when unchanged).

Cross-checks (`crosscheck: true`, legacy stream/rr cases): after the isoperf run and the second counter
snapshot, the same guests run iperf3 (stream) or sockperf ping-pong (rr) and the record gets its figures.

Stack iso: the package's C parts are built on the host before the upload (the guests have no gcc); per case,
isostackd runs on the client guest's last vCPU (`--uncontended-locks` when the case has locks) from before
the client starts until after it ends, the client is pinned to vCPU 0, and isostackd's log tail is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import isostack
from testbed import state
from testbed.harness import crosscheck, dmstats, isoperf_cmd, metadata, remote, report, results
from testbed.harness.isoperf_cmd import GuestLayout, IsoperfOutputError
from testbed.harness.playbook import Case, Playbook, load_playbook
from testbed.harness.remote import RemoteError, Shell

PACKAGE_DIR = Path(isostack.__file__).resolve().parent
REPO_ROOT = Path(__file__).resolve().parents[3]
SERVER_READY_TIMEOUT_S = 30.0
ISOSTACKD_READY_TIMEOUT_S = 30.0

StatsReader = Callable[[], dict]


class HarnessError(RuntimeError):
    """A run that cannot start (no testbed, bad playbook, unknown guest): one clear message."""


class Runner:
    """Runs cases on a topology through Shells; knows nothing about SSH or the CLI."""

    def __init__(
        self,
        topology: state.Topology,
        shells: dict[str, Shell],
        layout: GuestLayout,
        stats_reader: StatsReader | None,
        console: Console,
        package_dir: Path = PACKAGE_DIR,
    ):
        self.topology = topology
        self.shells = shells
        self.layout = layout
        self.stats_reader = stats_reader
        self.console = console
        self.package_dir = package_dir
        self._stats_warned = False
        self._stats_error = "no device-model counters reader"

    def pair(self, case: Case) -> tuple[state.GuestInfo, state.GuestInfo]:
        """(client, server) guests of a case: named in the playbook or the topology's first two."""
        guests = self.topology.guests
        if len(guests) < 2 and not (case.spec.client and case.spec.server):
            raise HarnessError(f"the testbed has {len(guests)} guest(s); a test needs two")
        try:
            client = self.topology.guest(case.spec.client) if case.spec.client else guests[0]
            server = self.topology.guest(case.spec.server) if case.spec.server else guests[1]
        except KeyError as e:
            raise HarnessError(f"test {case.spec.name!r}: {e.args[0]}") from None
        if client.name == server.name:
            raise HarnessError(f"test {case.spec.name!r}: client and server are both {client.name!r}")
        return client, server

    def build_native(self) -> None:
        """Build isostack's C parts (.so) on the host, into the package that is uploaded (the guests have no
        gcc): `python -m isostack.native` with that package first on the path."""
        env = dict(os.environ, PYTHONPATH=str(self.package_dir.parent))
        r = subprocess.run(
            [sys.executable, "-m", "isostack.native"], env=env, capture_output=True, text=True, timeout=300
        )
        if r.returncode != 0:
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            raise HarnessError(f"building isostack's native parts failed: {tail}")
        self.console.log(f"isostack native parts built: {', '.join(Path(p).name for p in r.stdout.split())}")

    def prepare(self, guest_names: list[str]) -> dict:
        """Upload the isostack package where needed; returns per-guest metadata (kernel, python)."""
        info = {}
        package = remote.PackageSnapshot.read(self.package_dir)
        for name in guest_names:
            shell = self.shells[name]
            uploaded = remote.sync_package(shell, package, self.layout.remote_root, self.layout.python)
            self.console.log(f"{name}: isostack package {'uploaded' if uploaded else 'unchanged, not uploaded'}")
            out = remote.check(shell, f"uname -r; {self.layout.python} --version 2>&1")
            lines = out.strip().splitlines() + ["", ""]
            info[name] = {
                "kernel": lines[0] or None,
                "python": lines[1] or None,
                "package_sha256": package.sha256,
            }
        return info

    def run_case(self, case: Case) -> dict:
        client, server = self.pair(case)
        record = {
            "test_name": case.spec.name,
            "test": case.spec.test,
            "stack": case.stack,
            "locks": case.locks,
            "size": case.size,
            "connections": case.connections,
            "repeat": case.repeat,
            "duration": case.spec.duration,
            "warmup": case.spec.warmup,
            "verify": case.spec.verify,
            "response_size": case.spec.response_size,
            "intervals": case.spec.intervals,
            "cpu_binding": case.spec.cpu,
            "client": client.name,
            "server": server.name,
            "server_ip": server.data_ip,
            "started_at": results.iso(results.utc_now()),
            "status": "failed",
            "error": None,
            "isoperf": None,
            "device_model": None,
            "crosscheck": None,
            "commands": {},
        }
        try:
            self._run_case(case, client, server, record)
        except (RemoteError, IsoperfOutputError, HarnessError) as e:
            record["error"] = str(e)
        if crosscheck.tool(case):
            record["crosscheck"] = self._crosscheck(case, client, server, record)
        record["ended_at"] = results.iso(results.utc_now())
        return record

    def _run_case(self, case: Case, client: state.GuestInfo, server: state.GuestInfo, record: dict) -> None:
        cshell, sshell = self.shells[client.name], self.shells[server.name]
        port = case.spec.port
        start = isoperf_cmd.server_start_command(self.layout, server.data_ip, port)
        out = remote.check(sshell, start).strip()
        if not out.splitlines() or not out.splitlines()[-1].isdigit():
            raise HarnessError(f"{server.name}: starting the isoperf server printed {out!r}, not a PID")
        pid = int(out.splitlines()[-1])
        cmd = isoperf_cmd.client_command(self.layout, case, server.data_ip)
        record["commands"] = {"server": start, "client": cmd}
        daemon: int | None = None
        try:
            self._wait_server(sshell, port, pid)
            if case.stack == "iso":
                daemon = self._start_isostackd(cshell, client, record, case.locks)
            before = self._stats()
            r = cshell.run(cmd, timeout_s=isoperf_cmd.client_timeout(case))
            after = self._stats() if before is not None else None
        finally:
            sshell.run(isoperf_cmd.server_stop_command(pid))
            log = sshell.run(f"tail -n 20 {isoperf_cmd.server_log(self.layout, port)}")
            record["server_log"] = log.stdout.strip().splitlines()
            if daemon is not None:
                cshell.run(isoperf_cmd.isostackd_stop_command(daemon))
            if case.stack == "iso":
                log = cshell.run(f"tail -n 20 {isoperf_cmd.isostackd_log(self.layout)}")
                record["isostackd_log"] = log.stdout.strip().splitlines()
        result = isoperf_cmd.parse_client_output(r.exit_code, r.stdout, r.stderr)
        record["isoperf"] = result
        record["device_model"] = self._device_model(before, after, client.port, server.port, result)
        if record["device_model"]["error"] == "counters unavailable":
            record["device_model"]["error"] = f"counters unavailable: {self._stats_error}"
        if result["errors"]:
            record["error"] = "; ".join(result["errors"][:3])
        else:
            record["status"] = "ok"

    def _start_isostackd(self, shell: Shell, guest: state.GuestInfo, record: dict, locks: bool = False) -> int:
        """Start isostackd on the guest's last vCPU (the client runs on vCPU 0); returns its PID once its
        socket exists."""
        if guest.vcpus < 2:
            raise HarnessError(f"{guest.name}: stack iso needs >= 2 vCPUs (one for isostackd), it has {guest.vcpus}")
        if record.get("cpu_binding") not in (None, isoperf_cmd.CLIENT_CPU):
            raise HarnessError(f"stack iso runs the client on vCPU {isoperf_cmd.CLIENT_CPU} (isostackd has the last"
                               f" one); 'cpu: {record['cpu_binding']}' does not fit")
        start = isoperf_cmd.isostackd_start_command(self.layout, guest.vcpus - 1, uncontended_locks=locks)
        record["commands"]["isostackd"] = start
        out = remote.check(shell, start).strip()
        if not out.splitlines() or not out.splitlines()[-1].isdigit():
            raise HarnessError(f"{guest.name}: starting isostackd printed {out!r}, not a PID")
        pid = int(out.splitlines()[-1])
        deadline = time.monotonic() + ISOSTACKD_READY_TIMEOUT_S
        while True:
            code = shell.run(isoperf_cmd.isostackd_ready_command(pid)).exit_code
            if code == 0:
                return pid
            if code == 3 or time.monotonic() > deadline:
                shell.run(isoperf_cmd.isostackd_stop_command(pid))
                log = shell.run(f"tail -n 5 {isoperf_cmd.isostackd_log(self.layout)}").stdout.strip()
                why = "exited" if code == 3 else f"has no socket after {ISOSTACKD_READY_TIMEOUT_S:.0f} s"
                raise HarnessError(f"{guest.name}: isostackd {why}: {' | '.join(log.splitlines())}")
            time.sleep(0.2)

    def _crosscheck(self, case: Case, client: state.GuestInfo, server: state.GuestInfo, record: dict) -> dict:
        """Run iperf3 / sockperf between the case's guests; their figures, or why there are none."""
        name = crosscheck.tool(case)
        out: dict = {"tool": name, "error": None, "skipped": crosscheck.skip_reason(case)}
        if out["skipped"]:
            return out
        cshell, sshell = self.shells[client.name], self.shells[server.name]
        port = crosscheck.port(case)
        start = crosscheck.server_start_command(name, server.data_ip, port)
        cmd = crosscheck.client_command(case, server.data_ip)
        record["commands"][f"{name}_server"] = start
        record["commands"][name] = cmd
        pid = None
        try:
            text = remote.check(sshell, start).strip()
            if not text.splitlines() or not text.splitlines()[-1].isdigit():
                raise HarnessError(f"{server.name}: starting the {name} server printed {text!r}, not a PID")
            pid = int(text.splitlines()[-1])
            deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
            while (code := sshell.run(crosscheck.server_ready_command(port, pid)).exit_code) != 0:
                if code == 3 or time.monotonic() > deadline:
                    log = sshell.run(f"tail -n 3 {crosscheck.log_path(name, port)}").stdout.strip()
                    raise HarnessError(f"{name} server {'exited' if code == 3 else 'is not listening'}: "
                                       f"{' | '.join(log.splitlines()) or 'no log'}")
                time.sleep(0.2)
            r = cshell.run(cmd, timeout_s=crosscheck.client_timeout(case))
            out.update(crosscheck.parse(name, r.exit_code, r.stdout, r.stderr))
        except (RemoteError, HarnessError, crosscheck.CrosscheckError) as e:
            out["error"] = str(e)
        finally:
            if pid is not None:
                sshell.run(crosscheck.server_stop_command(pid))
        return out

    def _wait_server(self, shell: Shell, port: int, pid: int) -> None:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while True:
            code = shell.run(isoperf_cmd.server_ready_command(self.layout, port, pid)).exit_code
            if code == 0:
                return
            if code == 3 or time.monotonic() > deadline:
                log = shell.run(f"tail -n 5 {isoperf_cmd.server_log(self.layout, port)}").stdout.strip()
                why = "exited" if code == 3 else f"is not listening after {SERVER_READY_TIMEOUT_S:.0f} s"
                raise HarnessError(f"{shell.name}: isoperf server {why}: {' | '.join(log.splitlines())}")
            time.sleep(0.2)

    def _stats(self) -> dict | None:
        if self.stats_reader is None:
            return None
        try:
            return self.stats_reader()
        except dmstats.StatsError as e:
            self._stats_error = str(e)
            if not self._stats_warned:
                self.console.log(f"[yellow]device-model counters unavailable: {e}[/yellow]")
                self._stats_warned = True
            return None

    @staticmethod
    def _device_model(
        before: dict | None, after: dict | None, client_port: str, server_port: str, result: dict
    ) -> dict:
        out = {"client_port": client_port, "server_port": server_port, "delta": None, "crossed": None, "error": None}
        if before is None or after is None:
            out["error"] = "counters unavailable"
            return out
        try:
            delta = dmstats.stats_delta(before, after)
        except dmstats.StatsError as e:
            out["error"] = str(e)
            return out
        out["delta"] = {name: d.to_dict() for name, d in delta.items()}
        out["crossed"] = all(
            dmstats.crossed_device_model(delta, port, payload)
            for port, payload in _payload_by_sender(result, client_port, server_port).items()
        )
        return out


def _payload_by_sender(result: dict, client_port: str, server_port: str) -> dict[str, int]:
    """Payload bytes (warm-up included) each guest's port must have taken in: the sender's side of each test.

    stream: the client sends; maerts: the server sends; rr/crr: requests from the client, responses from the
    server (counted from the transactions, which is what both sides agree on).
    """
    total = result.get("server_total_bytes") or result.get("bytes") or 0
    test = result.get("test", "stream")
    if test == "maerts":
        return {server_port: total}
    if test in ("rr", "crr"):
        size, rsize = int(result.get("size") or 0), int(result.get("response_size") or result.get("size") or 0)
        transactions = total // (size + rsize) if size + rsize else 0
        return {client_port: transactions * size, server_port: transactions * rsize}
    return {client_port: total}


def run_playbook(runner: Runner, playbook: Playbook, store: results.RunStore, console: Console) -> int:
    """Run every case with a progress bar; returns the number of failed or unproven cases."""
    cases = playbook.cases()
    bad = 0
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(playbook.name, total=len(cases))
        for case in cases:
            progress.update(task, description=case.label)
            record = runner.run_case(case)
            store.add_case(record)
            if record["status"] != "ok":
                bad += 1
                progress.console.log(f"[red]{case.label}: {record['error']}[/red]")
            elif (record["device_model"] or {}).get("crossed") is False:
                bad += 1
                progress.console.log(f"[yellow]{case.label}: the device model did not carry the data[/yellow]")
            else:
                progress.console.log(f"{case.label}: {report.summary(record)}")
            if (record.get("crosscheck") or {}).get("error"):
                progress.console.log(f"[yellow]{case.label}: cross-check: {record['crosscheck']['error']}[/yellow]")
            progress.advance(task)
        progress.update(task, description=f"{playbook.name}: done")
    return bad


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
        return execute(runner, playbook, Path(results_dir), used, console)
    finally:
        for shell in shells.values():
            shell.close()


def execute(
    runner: Runner, playbook: Playbook, results_dir: Path, guests: list[str], console: Console
) -> tuple[Path, int]:
    """Prepare the guests, open the run directory, run the cases; shared by the CLI and tests."""
    started = results.utc_now()
    with console.status("preparing guests"):
        if any(case.stack == "iso" for case in playbook.cases()):
            runner.build_native()  # before the upload, so the .so files travel with the package
        try:
            guest_info = runner.prepare(guests)
        except RemoteError as e:
            raise HarnessError(f"cannot prepare the guests: {e}") from None
    host = metadata.host_metadata(REPO_ROOT)
    host["accel"] = runner.topology.accel
    host["guests"] = guest_info
    host["guest_image"] = runner.topology.image
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
        },
    )
    bad = run_playbook(runner, playbook, store, console)
    store.finish(results.iso(results.utc_now()))
    (store.path / "report.md").write_text(report.markdown(store.run))
    return store.run_json, bad

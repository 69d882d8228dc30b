"""The benchmark loop: for each case of a playbook, run isoperf between two guests and record it.

Per case: start a one-session `isoperf server` on the server guest (bound to its data IP), snapshot the
device-model counters, run the client on the other guest against that data IP, snapshot again, store the
isoperf JSON with the per-port deltas. The guest packages (guestcmd: isostack and isoperf, folders of this
repository, never imported here) are uploaded once per run (each skipped when unchanged).

Cross-checks (`crosscheck: true`, legacy stream/rr cases): after the isoperf run and the second counter
snapshot, the same guests run iperf3 (stream) or sockperf ping-pong (rr) and the record gets its figures.

Stack iso: the packages' C parts are built on the host before the upload (the guests have no gcc); per case,
the case's isostackd instances (`instances: N`, placement_cmd.plan: instance K on vCPU vcpus - N + K with queue
pairs K, K + N, ...; one instance: the last vCPU, all queues; `--uncontended-locks` when the case has locks,
`--so-busy-poll-us`, `--nap-max-us` and `--epoll-busy-poll-us` when the playbook sets them) run on the client
guest from before the client starts until after it ends, the client is pinned to vCPU 0 and finds them all
through the base socket (discovery).  Each instance places its own queues' IRQs/RPS/XPS on its vCPU; its
command, PID, placement lines, final stats (its "stats: {...}" log line at exit) and log tail are recorded
(`isostackd`, and `isostackd_log` for instance 0).  Before a run starts, every iso test is checked against
the client guest's vCPUs and the testbed's queue pairs: a playbook asking for more is an error naming its line
and the `testbed up` flags.

Placement: the server guest (kernel sockets whatever the stack) and the client of a legacy case get the
legacy placement (`isostack.placement --legacy`: queue IRQs spread over all vCPUs, RPS off) before the case;
both guests' NIC layout (queue IRQ affinities, RPS/XPS masks) is read before the client runs and the
interrupts per CPU of each queue vector are counted over the run: `placement` in the record.

TCP: both guests' TCP counters (tcpstats: sent and retransmitted segments, RTO timeouts, ...) are read around
the client's run; their change is `tcp` {"client": ..., "server": ...} in the record, and the client's
retransmission share is a column of the IsoStack vs legacy table (a case spent in loss recovery shows).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from testbed import state
from testbed.harness import (
    crosscheck,
    dmstats,
    guestcmd,
    isoperf_cmd,
    metadata,
    placement_cmd,
    remote,
    report,
    results,
    tcpstats,
    upload,
)
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.isoperf_cmd import IsoperfOutputError
from testbed.harness.playbook import Case, Playbook, load_playbook
from testbed.harness.remote import RemoteError, Shell

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
        guest_root: Path = guestcmd.GUEST_ROOT,
    ):
        self.topology = topology
        self.shells = shells
        self.layout = layout
        self.stats_reader = stats_reader
        self.console = console
        self.guest_root = guest_root  # the folder holding the guest packages (guestcmd.GUEST_PACKAGES)
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

    def queue_pairs(self) -> int:
        """The data NIC's queue pairs per guest, as `testbed up --queues` set them (1 if not recorded)."""
        try:
            return int((self.topology.options or {}).get("queues", 1))
        except (TypeError, ValueError):
            return 1

    def check_playbook(self, playbook: Playbook) -> None:
        """Every iso test fits its client guest: N instances need N + 1 vCPUs and N queue pairs; else a
        HarnessError naming the playbook line and the `testbed up` flags that would make it fit."""
        queues = self.queue_pairs()
        for i, spec in enumerate(playbook.tests):
            cases = [c for c in playbook.cases() if c.spec is spec and c.stack == "iso"]
            if not cases:
                continue
            client, _server = self.pair(cases[0])
            n = max(spec.instances)
            try:
                placement_cmd.plan(n, client.vcpus, queues)
            except ValueError as e:
                flags = placement_cmd.testbed_flags(n, client.vcpus, queues)
                raise HarnessError(
                    f"{playbook.path}:{spec.instances_line}: tests[{i}] ({spec.name}): instances {n} on {client.name}:"
                    f" {e}; bring the testbed up with `testbed up {flags}` (this replaces the running one; keep"
                    f" its other options)"
                ) from None

    def check_native(self) -> None:
        """The guest packages' C parts must be built in the folders that are uploaded (upload.check_native_parts)."""
        try:
            built = upload.check_native_parts(self.guest_root)
        except upload.NativePartsMissing as e:
            raise HarnessError(str(e)) from None
        self.console.log(f"guest native parts built: {', '.join(built)}")

    def prepare(self, guest_names: list[str]) -> dict:
        """Upload the guest packages where needed; returns per-guest metadata (upload.sync_guest)."""
        packages = upload.snapshots(self.guest_root)
        return {name: upload.sync_guest(self.shells[name], packages, self.layout, self.console.log)
                for name in guest_names}

    def run_case(self, case: Case) -> dict:
        client, server = self.pair(case)
        record = {
            "test_name": case.spec.name,
            "test": case.spec.test,
            "stack": case.stack,
            "locks": case.locks,
            "instances": case.instances,
            "so_busy_poll_us": case.spec.so_busy_poll_us if case.stack == "iso" else None,
            "nap_max_us": case.spec.nap_max_us if case.stack == "iso" else None,
            "epoll_busy_poll_us": case.spec.epoll_busy_poll_us if case.stack == "iso" else None,
            "size": case.size,
            "connections": case.connections,
            "repeat": case.repeat,
            "duration": case.spec.duration,
            "warmup": case.spec.warmup,
            "verify": case.spec.verify,
            "response_size": case.spec.response_size,
            "intervals": case.spec.intervals,
            "cpu_binding": case.spec.cpu,
            "sndbuf": case.spec.sndbuf,
            "client": client.name,
            "server": server.name,
            "server_ip": server.data_ip,
            "started_at": results.iso(results.utc_now()),
            "status": "failed",
            "error": None,
            "isoperf": None,
            "device_model": None,
            "tcp": None,
            "crosscheck": None,
            "placement": {},
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
        daemons: list[tuple[placement_cmd.InstancePlan, int]] = []
        plans: list[placement_cmd.InstancePlan] = []
        try:
            self._wait_server(sshell, port, pid)
            record["placement"][server.name] = self._place_legacy(sshell, record, "server")
            if case.stack == "iso":
                plans = self._plan(case, client)
                daemons = self._start_instances(cshell, client, record, case, plans)
                record["placement"][client.name] = {"mode": "isostack", "command": None, "exit_code": None,
                                                    "output": []}
            else:
                record["placement"][client.name] = self._place_legacy(cshell, record, "client")
            layouts = {g.name: self._layout(self.shells[g.name]) for g in (client, server)}
            for name, layout in layouts.items():
                record["placement"][name]["layout"] = layout
            before = self._stats()
            tcp_before = {role: self._tcp(g) for role, g in (("client", client), ("server", server))}
            r = cshell.run(cmd, timeout_s=isoperf_cmd.client_timeout(case))
            after = self._stats() if before is not None else None
            record["tcp"] = {role: self._tcp_delta(g, tcp_before[role])
                             for role, g in (("client", client), ("server", server))}
            for g in (client, server):
                later = self._layout(self.shells[g.name])
                record["placement"][g.name]["interrupts"] = placement_cmd.interrupts_delta(layouts[g.name], later)
        finally:
            sshell.run(isoperf_cmd.server_stop_command(pid))
            log = sshell.run(f"tail -n 20 {isoperf_cmd.server_log(self.layout, port)}")
            record["server_log"] = log.stdout.strip().splitlines()
            for _plan, daemon in reversed(daemons):
                cshell.run(isoperf_cmd.isostackd_stop_command(daemon))
            if plans:
                self._record_instances(cshell, record, plans, dict((p.instance, d) for p, d in daemons))
        result = isoperf_cmd.parse_client_output(r.exit_code, r.stdout, r.stderr)
        record["isoperf"] = result
        record["device_model"] = self._device_model(before, after, client.port, server.port, result)
        if record["device_model"]["error"] == "counters unavailable":
            record["device_model"]["error"] = f"counters unavailable: {self._stats_error}"
        if result["errors"]:
            record["error"] = "; ".join(result["errors"][:3])
        else:
            record["status"] = "ok"

    def _plan(self, case: Case, guest: state.GuestInfo) -> list[placement_cmd.InstancePlan]:
        if guest.vcpus < 2:
            raise HarnessError(f"{guest.name}: stack iso needs >= 2 vCPUs (one for isostackd), it has {guest.vcpus}")
        if case.spec.cpu not in (None, isoperf_cmd.CLIENT_CPU):
            raise HarnessError(f"stack iso runs the client on vCPU {isoperf_cmd.CLIENT_CPU} (isostackd has the last"
                               f" one); 'cpu: {case.spec.cpu}' does not fit")
        try:
            return placement_cmd.plan(case.instances, guest.vcpus, self.queue_pairs())
        except ValueError as e:
            raise HarnessError(f"{guest.name}: {e}") from None

    def _start_instances(self, shell: Shell, guest: state.GuestInfo, record: dict, case: Case,
                         plans: list[placement_cmd.InstancePlan]) -> list[tuple[placement_cmd.InstancePlan, int]]:
        """Start every planned isostackd instance (the client runs on vCPU 0); returns (plan, PID) once every
        socket exists.  If one fails, the ones started are stopped and the error carries its log."""
        remote.check(shell, isoperf_cmd.isostackd_cleanup_command())
        started: list[tuple[placement_cmd.InstancePlan, int]] = []
        try:
            for plan in plans:
                start = isoperf_cmd.isostackd_start_command(
                    self.layout, plan.cpu, uncontended_locks=case.locks, instance=plan.instance, queues=plan.queues,
                    socket=plan.socket, so_busy_poll_us=case.spec.so_busy_poll_us, nap_max_us=case.spec.nap_max_us,
                    epoll_busy_poll_us=case.spec.epoll_busy_poll_us)
                record["commands"]["isostackd" if plan.instance == 0 else f"isostackd-{plan.instance}"] = start
                out = remote.check(shell, start).strip()
                if not out.splitlines() or not out.splitlines()[-1].isdigit():
                    raise HarnessError(f"{guest.name}: starting isostackd instance {plan.instance} printed {out!r},"
                                       " not a PID")
                started.append((plan, int(out.splitlines()[-1])))
            for plan, pid in started:
                self._wait_isostackd(shell, guest, plan, pid)
        except BaseException:
            for _plan, pid in reversed(started):
                shell.run(isoperf_cmd.isostackd_stop_command(pid))
            raise
        return started

    def _wait_isostackd(self, shell: Shell, guest: state.GuestInfo, plan: placement_cmd.InstancePlan,
                        pid: int) -> None:
        deadline = time.monotonic() + ISOSTACKD_READY_TIMEOUT_S
        while True:
            code = shell.run(isoperf_cmd.isostackd_ready_command(pid, plan.socket)).exit_code
            if code == 0:
                return
            if code == 3 or time.monotonic() > deadline:
                log = shell.run(f"tail -n 5 {isoperf_cmd.isostackd_log(self.layout, plan.instance)}").stdout.strip()
                why = "exited" if code == 3 else f"has no socket after {ISOSTACKD_READY_TIMEOUT_S:.0f} s"
                name = "isostackd" if plan.instance == 0 else f"isostackd instance {plan.instance}"
                raise HarnessError(f"{guest.name}: {name} {why}: {' | '.join(log.splitlines())}")
            time.sleep(0.2)

    def _record_instances(self, shell: Shell, record: dict, plans: list[placement_cmd.InstancePlan],
                          pids: dict[int, int]) -> None:
        """Each instance's placement, PID, final stats and log tail into the record (after they stopped)."""
        out = []
        for plan in plans:
            text = shell.run(f"tail -n 200 {isoperf_cmd.isostackd_log(self.layout, plan.instance)}").stdout
            lines = text.strip().splitlines()
            out.append({
                **plan.to_dict(),
                "pid": pids.get(plan.instance),
                "command": record["commands"].get("isostackd" if plan.instance == 0 else f"isostackd-{plan.instance}"),
                "placement": placement_cmd.placement_lines(text),
                "stats": placement_cmd.parse_stats(text),
                "log": lines[-20:],
            })
        record["isostackd"] = out
        record["isostackd_log"] = out[0]["log"] if out else []

    def _place_legacy(self, shell: Shell, record: dict, role: str) -> dict:
        """The legacy placement on a guest; what it set (or could not) goes into the record, a failure is
        logged, not fatal (the layout snapshot says what the NIC looked like)."""
        cmd = placement_cmd.legacy_command(self.layout)
        record["commands"][f"placement_{role}"] = cmd
        r = shell.run(cmd)
        lines = (r.stdout.strip() or r.stderr.strip()).splitlines()
        if r.exit_code != 0:
            self.console.log(f"[yellow]{shell.name}: legacy placement exited {r.exit_code}:"
                             f" {' | '.join(lines[-2:])}[/yellow]")
        return {"mode": "legacy", "command": cmd, "exit_code": r.exit_code, "output": lines}

    def _tcp(self, guest: state.GuestInfo) -> dict | str:
        """The guest's TCP counters, or why they could not be read (the case goes on without them)."""
        r = self.shells[guest.name].run(tcpstats.COMMAND)
        if r.exit_code != 0:
            return f"{tcpstats.COMMAND} exited {r.exit_code}"
        try:
            return tcpstats.parse(r.stdout)
        except tcpstats.TcpStatsError as e:
            return str(e)

    def _tcp_delta(self, guest: state.GuestInfo, before: dict | str) -> dict:
        after = self._tcp(guest)
        if isinstance(before, str) or isinstance(after, str):
            return {"error": before if isinstance(before, str) else after}
        return tcpstats.delta(before, after)

    def _layout(self, shell: Shell) -> dict:
        return placement_cmd.parse_snapshot(shell.run(placement_cmd.snapshot_command()).stdout)

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

"""One case between two guests: its record, and the order of what runs on the guests to fill it.

Per case: start a one-session `isoperf server` on the server guest (bound to its data IP), place the NICs
(legacy placement, or the case's isostackd instances on the client guest), read the counters, run the client
against the server's data IP, read them again, stop everything and store the isoperf JSON with the changes.
A failure on a guest ends the case with its message in `error`; the run goes on with the next case.

Placement (the playbook's `placement`, pinning.py): the server guest (kernel sockets whatever the stack) and
the client of a legacy case get the legacy placement (`isostack.placement --legacy`, `--irq-cpus` for apart and
irq; RPS off) before the case, and their application is pinned (the client by `taskset`, the running server
by `taskset -a -p`); stack iso's isostackd places its own queues. Both guests' NIC layout (queue IRQ
affinities, RPS/XPS masks) is read before the client runs and the interrupts per CPU of each queue vector are
counted over the run; whether they stayed on the vCPUs meant for them is judged: `placement` in the record.
"""

from __future__ import annotations

from rich.console import Console

from testbed import state
from testbed.harness import (
    control_path,
    crosscheck,
    crosscheck_run,
    detached,
    hostcpu_sample,
    instances,
    iso_traffic,
    isoperf_cmd,
    measure,
    peer_role,
    pinning,
    placement_cmd,
    program_cmd,
    remote,
    results,
)
from testbed.harness.detached import SERVER_READY_TIMEOUT_S, Readiness
from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.isoperf_cmd import IsoperfOutputError
from testbed.harness.playbook import Case
from testbed.harness.program_cmd import ProgramOutputError
from testbed.harness.remote import RemoteError, Shell


def new_record(case: Case, client: state.GuestInfo, server: state.GuestInfo) -> dict:
    """The record of a case before it runs: what was asked, on which guests; `failed` until proven `ok`."""
    return {
        "test_name": case.spec.name,
        "test": case.spec.test,
        "stack": case.stack,
        "server_stack": case.server_stack,
        "program": case.program,
        "frontend": case.frontend,
        "locks": case.locks,
        "instances": case.instances,
        "placement_mode": case.placement,
        "placement_axis": case.placement_axis,
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
        "isostack_traffic": None,
        "host_cpu": None,
        "placement": {},
        "control": None,
        "commands": {},
    }


class CaseRunner:
    """Runs one case on two guests through their Shells; knows nothing of the topology or the playbook."""

    def __init__(self, shells: dict[str, Shell], layout: GuestLayout, counters: measure.DeviceModelCounters,
                 console: Console, hostcpu: hostcpu_sample.HostCpuSampler | None = None,
                 layouts: dict[str, GuestLayout] | None = None, peer: state.PeerInfo | None = None,
                 hosts: dict[str, str] | None = None):
        self.shells = shells
        self.layout = layout
        self.layouts = layouts or {}  # a node's own layout by name (the native peer's), else `layout`
        self.counters = counters
        self.console = console
        self.hostcpu = hostcpu  # host CPU of the guests' vCPU threads and vhea per case; None: not sampled
        self.peer = peer  # the native peer's management link carries the control connection (control_path)
        self.hosts = hosts or {}  # guest name -> the other host it runs on (a merged topology); else this host

    def run(self, case: Case, client: state.GuestInfo, server: state.GuestInfo, queue_pairs: int) -> dict:
        """The case's record; errors of the guests end up in it, not raised."""
        record = new_record(case, client, server)
        try:
            self._run(case, client, server, queue_pairs, record)
        except (RemoteError, IsoperfOutputError, ProgramOutputError, HarnessError) as e:
            record["error"] = str(e)
        if crosscheck.tool(case):
            record["crosscheck"] = crosscheck_run.run(case, self.shells[client.name], self.shells[server.name],
                                                      server, record["commands"])
        record["ended_at"] = results.iso(results.utc_now())
        return record

    def _run(self, case: Case, client: state.GuestInfo, server: state.GuestInfo, queue_pairs: int,
             record: dict) -> None:
        cshell, sshell = self.shells[client.name], self.shells[server.name]
        port = case.spec.port
        slayout = self.layouts.get(server.name, self.layout)
        if case.program == "isoperf":
            control = control_path.choose(client, server, self.peer, port, self.hosts)
            record["control"] = control.to_dict()
            control_bind, data_bind = control_path.server_binds(server, control)
            start = isoperf_cmd.server_start_command(slayout, control_bind, port, data_bind, case.server_stack,
                                                     case.frontend)
            cmd = isoperf_cmd.client_command(self.layouts.get(client.name, self.layout), case, server.data_ip,
                                             (control.host, control.port))
        else:  # iperf3 / sockperf: their control connection goes with the data, to the data address
            start = program_cmd.server_start_command(slayout, case, server.data_ip)
            cmd = program_cmd.client_command(self.layouts.get(client.name, self.layout), case, server.data_ip)
        record["commands"] = {"server": start, "client": cmd}
        daemons: list[instances.Daemon] = []
        plans: list[placement_cmd.InstancePlan] = []
        server_daemons: list[instances.Daemon] = []
        server_plans: list[placement_cmd.InstancePlan] = []
        server_commands: dict = {}
        host_cpu: hostcpu_sample.HostCpuInterval | None = None
        pid = None
        try:
            if case.server_stack == "iso":  # isostackd on the server's guest first: the server attaches to it
                server_plans = instances.plan_server(server, queue_pairs)
                where = self._plan(pinning.iso, case.placement, tuple(p.cpu for p in server_plans), None)
                server_daemons = instances.start(sshell, slayout, server, case, server_plans, server_commands)
                record["commands"]["server_isostackd"] = server_commands.get("isostackd")
            pid = detached.start(sshell, start, server.name, f"the {case.program} server")
            self._wait_server(sshell, slayout, case, pid)
            if peer_role.is_peer(server):
                record["placement"][server.name] = peer_role.placement_record()
            elif case.server_stack == "iso":
                record["placement"][server.name] = {"mode": "isostack", "command": None, "exit_code": None,
                                                    "output": [], **where.to_record()}
                self._pin_server(sshell, record, record["placement"][server.name].get("app_cpus"), pid)
            else:
                record["placement"][server.name] = self._place_legacy(sshell, record, "server", case, server)
                self._pin_server(sshell, record, record["placement"][server.name].get("app_cpus"), pid)
            if case.stack == "iso":
                plans = instances.plan(case, client, queue_pairs)
                where = self._plan(pinning.iso, case.placement, tuple(p.cpu for p in plans), case.spec.cpu)
                daemons = instances.start(cshell, self.layout, client, case, plans, record["commands"])
                record["placement"][client.name] = {"mode": "isostack", "command": None, "exit_code": None,
                                                    "output": [], **where.to_record()}
            elif peer_role.is_peer(client):
                record["placement"][client.name] = peer_role.placement_record()
            else:
                record["placement"][client.name] = self._place_legacy(cshell, record, "client", case, client)
            app_cpus = record["placement"][client.name].get("app_cpus")
            cmd = record["commands"]["client"] = pinning.pinned(cmd, tuple(app_cpus) if app_cpus else None)
            layouts = {g.name: measure.nic_layout(self.shells[g.name]) for g in (client, server)
                       if not peer_role.is_peer(g)}
            for name, layout in layouts.items():
                record["placement"][name]["layout"] = layout
            before = self.counters.read()
            tcp_before = {role: measure.tcp_counters(self.shells[g.name])
                          for role, g in (("client", client), ("server", server))}
            if self.hostcpu:  # guests by their vCPU threads; the native peer's isoperf server by its host PID
                host_cpu = self.hostcpu.start(
                    {role: g.name for role, g in (("client", client), ("server", server)) if not peer_role.is_peer(g)},
                    peer_pid=pid if peer_role.is_peer(server) else None)
            timeout = (isoperf_cmd if case.program == "isoperf" else program_cmd).client_timeout(case)
            r = cshell.run(cmd, timeout_s=timeout)
            if host_cpu:
                host_cpu.stop()
            after = self.counters.read() if before is not None else None
            record["tcp"] = {role: measure.tcp_change(self.shells[g.name], tcp_before[role])
                             for role, g in (("client", client), ("server", server))}
            for name in layouts:
                later = measure.nic_layout(self.shells[name])
                entry = record["placement"][name]
                entry["interrupts"] = placement_cmd.interrupts_delta(layouts[name], later)
                intended = entry.get("irq_cpus")
                entry.update(pinning.check(tuple(intended) if intended else None, layouts[name],
                                           entry["interrupts"]))
        finally:
            if pid is not None:
                sshell.run(isoperf_cmd.server_stop_command(pid) if case.program == "isoperf"
                           else program_cmd.server_stop_command(pid))
                record["server_log"] = detached.log_tail(sshell, self._server_log(slayout, case), 20)
            instances.stop(sshell, server_daemons)
            if server_plans:
                record["server_isostackd"] = instances.records(sshell, slayout, server_plans, server_daemons,
                                                               server_commands)
            instances.stop(cshell, daemons)
            if plans:
                record["isostackd"] = instances.records(cshell, self.layout, plans, daemons, record["commands"])
                record["isostackd_log"] = record["isostackd"][0]["log"] if record["isostackd"] else []
        if case.program == "isoperf":
            result = isoperf_cmd.parse_client_output(r.exit_code, r.stdout, r.stderr)
        else:
            result = program_cmd.parse_client_output(case, r.exit_code, r.stdout, r.stderr)
        record["isoperf"] = result  # isoperf's keys whatever the program (program_cmd), so reports compare them
        record["isostack_traffic"] = self._iso_traffic(case, record, client, server, result)
        if host_cpu:
            record["host_cpu"] = host_cpu.record(result, client.vcpus)
        record["device_model"] = self.counters.record(before, after, client.port, server.port, result)
        if remote := [g for g in (client, server) if g.name in self.hosts]:  # its port is on its host's vhea
            record["device_model"].update(delta=None, crossed=None, error=f"{remote[0].name} runs on "
                                          f"{self.hosts[remote[0].name]}: its vhea port is not this host's")
        if result["errors"]:
            record["error"] = "; ".join(result["errors"][:3])
        else:
            record["status"] = "ok"

    def _wait_server(self, shell: Shell, layout: GuestLayout, case: Case, pid: int) -> None:
        ready = (isoperf_cmd.server_ready_command(layout, case.spec.port, pid) if case.program == "isoperf"
                 else program_cmd.server_ready_command(case, pid))
        readiness = detached.wait_ready(shell, ready, SERVER_READY_TIMEOUT_S)
        if readiness is Readiness.READY:
            return
        log = detached.log_tail(shell, self._server_log(layout, case), 5)
        why = "exited" if readiness is Readiness.EXITED else f"is not listening after {SERVER_READY_TIMEOUT_S:.0f} s"
        raise HarnessError(f"{shell.name}: {case.program} server {why}: {' | '.join(log)}")

    @staticmethod
    def _server_log(layout: GuestLayout, case: Case) -> str:
        if case.program == "isoperf":
            return isoperf_cmd.server_log(layout, case.spec.port)
        return program_cmd.server_log(layout, case)

    @staticmethod
    def _iso_traffic(case: Case, record: dict, client: state.GuestInfo, server: state.GuestInfo,
                     result: dict) -> dict | None:
        """Each IsoStack end's isostackd counters against the program's bytes (iso_traffic): a case that claims
        IsoStack without them fails (HarnessError), with the front-end it used in its record."""
        if not case.iso_ends:
            return None
        records = {"client": (client, record.get("isostackd")), "server": (server, record.get("server_isostackd"))}
        out = {"frontend": case.frontend}
        for end in case.iso_ends:
            guest, recs = records[end]
            out[end] = iso_traffic.check(f"the {case.program} {end}", guest.name, recs, case.program,
                                         int(result.get("bytes") or 0))
        return out

    @staticmethod
    def _plan(make, *args) -> pinning.GuestPlacement:
        try:
            return make(*args)
        except ValueError as e:
            raise HarnessError(str(e)) from None

    def _place_legacy(self, shell: Shell, record: dict, role: str, case: Case, guest: state.GuestInfo) -> dict:
        """The legacy placement of the case's mode on a guest; what it set (or could not) goes into the record,
        a failure is logged, not fatal (the layout snapshot says what the NIC looked like, and the record
        whether the interrupts went where they were meant to)."""
        where = self._plan(pinning.legacy, case.placement, guest.vcpus, case.spec.cpu if role == "client" else None)
        cmd = placement_cmd.legacy_command(self.layout, irq_cpus=where.irq_cpus)
        record["commands"][f"placement_{role}"] = cmd
        r = shell.run(cmd)
        lines = (r.stdout.strip() or r.stderr.strip()).splitlines()
        if r.exit_code != 0:
            self.console.log(f"[yellow]{shell.name}: legacy placement exited {r.exit_code}:"
                             f" {' | '.join(lines[-2:])}[/yellow]")
        return {"mode": "legacy", "command": cmd, "exit_code": r.exit_code, "output": lines, **where.to_record()}

    @staticmethod
    def _pin_server(shell: Shell, record: dict, cpus: list[int] | None, pid: int) -> None:
        """Pin the listening isoperf server where its guest's placement puts the application (a failure ends
        the case: it would not run the layout asked for)."""
        if cpus:
            cmd = record["commands"]["pin_server"] = pinning.pin_running_command(pid, tuple(cpus))
            remote.check(shell, cmd)

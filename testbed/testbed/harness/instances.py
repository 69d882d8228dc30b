"""The isostackd instances of a stack-iso case on the client guest: plan, start, wait, stop, record.

They run from before the client starts until after it ends. `instances: N` (placement_cmd.plan): instance K on
vCPU vcpus - N + K with queue pairs K, K + N, ...; one instance: the last vCPU, all queues; the client is
pinned to vCPU 0 and finds them all through the base socket (discovery). `--uncontended-locks` when the case
has locks, `--so-busy-poll-us`, `--nap-max-us` and `--epoll-busy-poll-us` when the playbook sets them. Each
instance places its own queues' IRQs/RPS/XPS on its vCPU; its command, PID, placement lines, final stats (its
"stats: {...}" log line at exit) and log tail are recorded (`isostackd`, and `isostackd_log` for instance 0).
"""

from __future__ import annotations

from typing import NamedTuple

from testbed import state
from testbed.harness import detached, isostackd_cmd, placement_cmd, remote
from testbed.harness.detached import Readiness
from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.placement_cmd import InstancePlan
from testbed.harness.playbook import Case
from testbed.harness.remote import Shell

READY_TIMEOUT_S = 90.0  # a wait bound only: a TCG guest on a loaded host took > 30 s to start Python


class Daemon(NamedTuple):
    """A started isostackd instance: what it was planned to own and its PID on the guest."""

    plan: InstancePlan
    pid: int


def command_key(instance: int) -> str:
    """The key of an instance's start command in the record's `commands` (instance 0 is plain `isostackd`)."""
    return "isostackd" if instance == 0 else f"isostackd-{instance}"


def plan(case: Case, guest: state.GuestInfo, queue_pairs: int) -> list[InstancePlan]:
    """The case's instances on its client guest, or a HarnessError saying why the guest cannot hold them."""
    if guest.vcpus < 2:
        raise HarnessError(f"{guest.name}: stack iso needs >= 2 vCPUs (one for isostackd), it has {guest.vcpus}")
    if case.spec.cpu not in (None, isostackd_cmd.CLIENT_CPU):
        raise HarnessError(f"stack iso runs the client on vCPU {isostackd_cmd.CLIENT_CPU} (isostackd has the last"
                           f" one); 'cpu: {case.spec.cpu}' does not fit")
    try:
        return placement_cmd.plan(case.instances, guest.vcpus, queue_pairs)
    except ValueError as e:
        raise HarnessError(f"{guest.name}: {e}") from None


def plan_server(guest: state.GuestInfo, queue_pairs: int) -> list[InstancePlan]:
    """One isostackd on a server guest (server_stack iso): the last vCPU, all queues."""
    if guest.vcpus < 2:
        raise HarnessError(f"{guest.name}: server_stack iso needs >= 2 vCPUs (one for isostackd), it has "
                           f"{guest.vcpus}")
    return placement_cmd.plan(1, guest.vcpus, queue_pairs)


def start(shell: Shell, layout: GuestLayout, guest: state.GuestInfo, case: Case, plans: list[InstancePlan],
          commands: dict) -> list[Daemon]:
    """Start every planned instance (their commands go into `commands` as they start); returns them once every
    socket exists.  If one fails, the ones started are stopped and the error carries its log."""
    remote.check(shell, isostackd_cmd.cleanup_command())
    started: list[Daemon] = []
    try:
        for p in plans:
            command = isostackd_cmd.start_command(
                layout, p.cpu, uncontended_locks=case.locks, instance=p.instance, queues=p.queues,
                socket=p.socket, so_busy_poll_us=case.spec.so_busy_poll_us, nap_max_us=case.spec.nap_max_us,
                epoll_busy_poll_us=case.spec.epoll_busy_poll_us)
            commands[command_key(p.instance)] = command
            started.append(Daemon(p, detached.start(shell, command, guest.name, f"isostackd instance {p.instance}")))
        for daemon in started:
            _wait_ready(shell, layout, guest, daemon)
    except BaseException:
        stop(shell, started)
        raise
    return started


def _wait_ready(shell: Shell, layout: GuestLayout, guest: state.GuestInfo, daemon: Daemon) -> None:
    readiness = detached.wait_ready(shell, isostackd_cmd.ready_command(daemon.pid, daemon.plan.socket),
                                    READY_TIMEOUT_S)
    if readiness is Readiness.READY:
        return
    log = detached.log_tail(shell, isostackd_cmd.log_path(layout, daemon.plan.instance), 5)
    why = "exited" if readiness is Readiness.EXITED else f"has no socket after {READY_TIMEOUT_S:.0f} s"
    name = "isostackd" if daemon.plan.instance == 0 else f"isostackd instance {daemon.plan.instance}"
    raise HarnessError(f"{guest.name}: {name} {why}: {' | '.join(log)}")


def stop(shell: Shell, daemons: list[Daemon]) -> None:
    """Stop the instances, the last started first."""
    for daemon in reversed(daemons):
        shell.run(isostackd_cmd.stop_command(daemon.pid))


def records(shell: Shell, layout: GuestLayout, plans: list[InstancePlan], daemons: list[Daemon],
            commands: dict) -> list[dict]:
    """Each planned instance's placement, PID (None if it never started), command, final stats and log tail,
    read from its log after it stopped."""
    pids = {daemon.plan.instance: daemon.pid for daemon in daemons}
    out = []
    for p in plans:
        text = shell.run(f"tail -n 200 {isostackd_cmd.log_path(layout, p.instance)}").stdout
        lines = text.strip().splitlines()
        out.append({
            **p.to_dict(),
            "pid": pids.get(p.instance),
            "command": commands.get(command_key(p.instance)),
            "placement": placement_cmd.placement_lines(text),
            "stats": placement_cmd.parse_stats(text),
            "log": lines[-20:],
        })
    return out

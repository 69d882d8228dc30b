"""The isostackd command line: choose and pin the dedicated CPU, place the NIC queues, run the dispatcher."""

from __future__ import annotations

import argparse
import logging
import os
import signal

from .. import placement
from ..attach import DEFAULT_SOCKET, MAX_INSTANCES, instance_path
from .loop import Dispatcher
from .state import Limits

log = logging.getLogger("isostackd")


def online_cpus() -> set[int]:
    try:
        text = open("/sys/devices/system/cpu/online").read().strip()
        return placement.parse_cpu_list(text)
    except OSError:
        return set(range(os.cpu_count() or 1))


def isolated_cpus() -> set[int]:
    try:
        return placement.parse_cpu_list(open("/sys/devices/system/cpu/isolated").read().strip())
    except OSError:
        return set()


def choose_cpu(cpu: int | None, allow_shared: bool, online: set[int], isolated: set[int]) -> int:
    """The CPU to pin to; SystemExit with a clear message when it does not exist or is not dedicated."""
    if cpu is None:
        cpu = max(isolated) if isolated else max(online)
    if cpu not in online:
        raise SystemExit(f"isostackd: CPU {cpu} does not exist (online CPUs: {placement.format_cpu_list(online)})")
    if cpu not in isolated and not allow_shared:
        raise SystemExit(
            f"isostackd: CPU {cpu} is shared with other tasks (isolated CPUs: "
            f"{placement.format_cpu_list(isolated) or 'none'}); boot with isolcpus= or pass --allow-shared"
        )
    if len(online) == 1 and not allow_shared:
        raise SystemExit("isostackd: only one CPU: the dispatcher cannot have a dedicated one (--allow-shared)")
    return cpu


# flag -> (Limits field, what it bounds, largest value): docs/isostack.md, "Hostile applications and limits"
LIMIT_FLAGS = {
    "--max-apps": ("max_apps", "attached applications", 1 << 16),
    "--max-handshakes": ("max_handshakes", "attach connections whose hello has not arrived", 1 << 16),
    "--handshake-timeout-ms": ("handshake_timeout_s", "time an accepted connection has to send its hello",
                               60_000),
    "--max-watches": ("max_watches", "readiness eventfds per application", 1 << 20),
    "--max-kernel-sockets": ("max_kernel_sockets", "kernel sockets per application (in its slots and accepted "
                             "into its backlogs)", 1 << 20),
    "--queue-budget": ("queue_budget", "commands taken from one socket's queue per pass", 1 << 20),
    "--app-budget": ("app_budget", "commands taken from one application's queues per pass", 1 << 20),
    "--app-budget-us": ("app_budget_us", "dispatcher time (microseconds) one application's commands may take per "
                        "pass, deficit round-robin", 1 << 20),
}


def limit_value(flag: str):
    """An argparse type: an integer in 1..the flag's largest value, else a clear error naming the range."""
    largest = LIMIT_FLAGS[flag][2]

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not 1 <= value <= largest:
            raise argparse.ArgumentTypeError(f"{value} is not in 1..{largest}")
        return value
    return parse


def limits_from(args: argparse.Namespace) -> Limits:
    values = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in LIMIT_FLAGS.items()}
    values["handshake_timeout_s"] /= 1000
    return Limits(**values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isostackd", description="IsoStack dispatcher on a dedicated CPU")
    p.add_argument("--socket", default=None,
                   help=f"attach socket (default {DEFAULT_SOCKET}, or its instance_path for --instance K)")
    p.add_argument("--instance", type=int, default=0, help="instance number when several dispatchers run (0..15)")
    p.add_argument("--queues", default="",
                   help="NIC queue pairs this instance owns and places, e.g. 0,2 (default: all queues)")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: highest isolated, else highest)")
    p.add_argument("--allow-shared", action="store_true", help="run on a CPU that is not isolated")
    p.add_argument("--busy-poll-us", type=int, default=1000,
                   help="busy-poll this long after the last work before sleeping in epoll; -1 never sleeps")
    p.add_argument("--sleep-ms", type=int, default=100, help="longest epoll sleep when idle")
    p.add_argument("--fixed-poll", action="store_true",
                   help="always busy-poll the whole --busy-poll-us before sleeping (no adaptive window)")
    p.add_argument("--nap-max-us", type=int, default=1000,
                   help="longest coalescing nap between drains of streaming tx rings (adaptive; 0: never nap)")
    p.add_argument("--so-busy-poll-us", type=int, default=50,
                   help="SO_BUSY_POLL on every kernel socket (0: not set)")
    p.add_argument("--epoll-busy-poll-us", type=int, default=-1,
                   help="set the global net.core.busy_poll sysctl (epoll busy polling) while running; -1: leave it")
    p.add_argument("--uncontended-locks", action="store_true",
                   help="take a lock around every queue operation and socket-state access (lock ablation)")
    p.add_argument("--no-placement", action="store_true", help="do not move NIC IRQs/RPS/XPS to our CPU")
    p.add_argument("--interfaces", default="", help="comma-separated NICs to place (default: all virtio-net)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    defaults = Limits()
    limits = p.add_argument_group("limits (each counted in the stats when hit; docs/isostack.md)")
    for flag, (field, what, largest) in LIMIT_FLAGS.items():
        default = getattr(defaults, field)
        if field == "handshake_timeout_s":
            default = round(default * 1000)
        limits.add_argument(flag, type=limit_value(flag), default=default, metavar="N",
                            help=f"{what}, 1..{largest} (default {default})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.instance < MAX_INSTANCES:
        raise SystemExit(f"isostackd: --instance {args.instance} not in 0..{MAX_INSTANCES - 1}")
    try:
        queues = placement.parse_cpu_list(args.queues) if args.queues else None
    except ValueError:
        raise SystemExit(f"isostackd: bad --queues {args.queues!r}") from None
    path = args.socket or instance_path(DEFAULT_SOCKET, args.instance)
    logging.basicConfig(level=args.log_level, format="%(asctime)s isostackd %(levelname)s %(message)s")
    cpu = choose_cpu(args.cpu, args.allow_shared, online_cpus(), isolated_cpus())
    os.sched_setaffinity(0, {cpu})
    log.info("pinned to CPU %d", cpu)
    if not args.no_placement:
        interfaces = [i for i in args.interfaces.split(",") if i] or None
        for line in placement.place(cpu, interfaces, queues=queues):
            log.info("placement: %s", line)
    dispatcher = Dispatcher(path, cpu, busy_poll_us=args.busy_poll_us, uncontended_locks=args.uncontended_locks,
                            sleep_ms=args.sleep_ms, instance=args.instance, queues=queues,
                            so_busy_poll_us=args.so_busy_poll_us, epoll_busy_poll_us=args.epoll_busy_poll_us,
                            nap_max_us=args.nap_max_us, adaptive_poll=not args.fixed_poll,
                            limits=limits_from(args))

    def stop(signum, _frame):
        dispatcher.running = False

    def dump(signum, _frame):
        log.info("stats: %s", dispatcher.stats)

    signal.signal(signal.SIGUSR1, dump)  # the counters of a running isostackd, into its log
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("instance %d listening on %s (queues %s, busy poll %d us, SO_BUSY_POLL %d us, epoll busy poll %s, "
             "locks %s)", args.instance, path, args.queues or "all", args.busy_poll_us, args.so_busy_poll_us,
             dispatcher.stats["epoll_busy_poll_us"], "on" if args.uncontended_locks else "off")
    log.info("limits: %s", dispatcher.shared.limits)
    try:
        dispatcher.run()
    finally:
        log.info("stats: %s", dispatcher.stats)
        dispatcher.close()
    return 0

"""The isostackd command lines the runner sends to the client guest, checked against isostackd's own parser."""

from __future__ import annotations

import shlex

from testbed.harness import isostackd_cmd
from testbed.harness.guestcmd import GuestLayout


def test_isostackd_commands():
    layout = GuestLayout()
    start = isostackd_cmd.start_command(layout, 1)
    assert start == (
        "rm -f /tmp/isostackd.log /run/isostack/isostackd.sock; nohup env PYTHONPATH=/opt python3"
        " -m isostack.dispatcher --cpu 1 --allow-shared --interfaces eth0 --socket /run/isostack/isostackd.sock"
        " > /tmp/isostackd.log 2>&1 < /dev/null & echo $!"
    )
    assert "--uncontended-locks" in isostackd_cmd.start_command(layout, 3, uncontended_locks=True)
    assert isostackd_cmd.ready_command(42) == (
        "test -S /run/isostack/isostackd.sock && exit 0; kill -0 42 2>/dev/null || exit 3; exit 1"
    )
    stop = isostackd_cmd.stop_command(42, grace_s=2)
    assert stop.startswith("kill 42 2>/dev/null || exit 0; for i in $(seq 20);")
    assert stop.endswith("kill -9 42 2>/dev/null; true")


def test_isostackd_argv_is_what_the_dispatcher_parses():
    from isostack.dispatcher import cli

    argv = shlex.split(isostackd_cmd.start_command(GuestLayout(), 1, uncontended_locks=True))
    argv = argv[argv.index("isostack.dispatcher") + 1 : argv.index(">")]
    args = cli.build_parser().parse_args(argv)
    assert (args.cpu, args.allow_shared, args.interfaces, args.socket, args.uncontended_locks) == (
        1, True, "eth0", "/run/isostack/isostackd.sock", True
    )


def _isostackd_args(start: str):
    """What isostackd's own parser makes of the arguments of a start command."""
    from isostack.dispatcher import cli

    argv = shlex.split(start)
    return cli.build_parser().parse_args(argv[argv.index("isostack.dispatcher") + 1 : argv.index(">")])


def test_isostackd_nap_max_and_epoll_busy_poll_are_passed_only_when_set():
    start = isostackd_cmd.start_command(GuestLayout(), 1, so_busy_poll_us=0, nap_max_us=0,
                                                epoll_busy_poll_us=50)
    assert " --so-busy-poll-us 0 --nap-max-us 0 --epoll-busy-poll-us 50 > " in start
    args = _isostackd_args(start)
    assert (args.so_busy_poll_us, args.nap_max_us, args.epoll_busy_poll_us) == (0, 0, 50)
    # -1 (leave net.core.busy_poll) is passed as a value, not taken for an option
    args = _isostackd_args(isostackd_cmd.start_command(GuestLayout(), 1, epoll_busy_poll_us=-1))
    assert args.epoll_busy_poll_us == -1 and args.nap_max_us == 1000  # isostackd's default nap
    default = isostackd_cmd.start_command(GuestLayout(), 1)
    assert "--nap-max-us" not in default and "--epoll-busy-poll-us" not in default
    assert default == isostackd_cmd.start_command(GuestLayout(), 1, nap_max_us=None, epoll_busy_poll_us=None)


def test_instance_start_command_and_what_the_dispatcher_parses():
    from isostack.dispatcher import cli

    start = isostackd_cmd.start_command(
        GuestLayout(), 2, instance=1, queues=(1, 3), socket="/run/isostack/isostackd-1.sock", so_busy_poll_us=0,
        uncontended_locks=True)
    assert start.startswith("rm -f /tmp/isostackd-1.log /run/isostack/isostackd-1.sock; nohup env ")
    assert start.endswith("> /tmp/isostackd-1.log 2>&1 < /dev/null & echo $!")
    argv = shlex.split(start)
    args = cli.build_parser().parse_args(argv[argv.index("isostack.dispatcher") + 1 : argv.index(">")])
    assert (args.instance, args.cpu, args.queues, args.socket, args.so_busy_poll_us, args.uncontended_locks,
            args.interfaces, args.allow_shared) == (
        1, 2, "1,3", "/run/isostack/isostackd-1.sock", 0, True, "eth0", True)
    # instance 0 with the defaults: the command line of one isostackd, as before instances existed
    assert isostackd_cmd.start_command(GuestLayout(), 1) == isostackd_cmd.start_command(
        GuestLayout(), 1, instance=0, queues=None, socket=isostackd_cmd.SOCKET, so_busy_poll_us=None)
    assert isostackd_cmd.ready_command(7, "/run/isostack/isostackd-1.sock").startswith(
        "test -S /run/isostack/isostackd-1.sock && exit 0;")
    assert isostackd_cmd.cleanup_command() == "rm -f /run/isostack/isostackd-[0-9]*.sock; true"

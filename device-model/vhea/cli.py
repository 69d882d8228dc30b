"""`vhea` command line: `serve` runs the device model, `bench` measures it; the commands that ask a running one
over its control socket (`stats`, `rule`, `rss`, `port`, ...) are vhea.ctl."""

from __future__ import annotations

import argparse
import grp
import logging
import os
import signal
import sys

from . import control, ctl, native
from .errors import MAX_SOCKET_PATH, PORT_NAME_RULE, ConfigError, UsageError, is_port_name
from .pause import DEFAULT_MAX_US
from .server import Server
from .server.loop import DEFAULT_SOCKET_MODE
from .tap import IFNAME_RULE, default_ifname, is_ifname

EXIT_USAGE = 2

log = logging.getLogger("vhea")


def check_serve_args(socket_dir: str, ports_arg: str, queues: int) -> list[str]:
    if not os.path.isdir(socket_dir):
        raise UsageError(f"socket dir {socket_dir} does not exist")
    ports = [p.strip() for p in ports_arg.split(",")]
    seen: set[str] = set()
    for p in ports:
        if not is_port_name(p):
            raise UsageError(f"bad port name {p!r}: {PORT_NAME_RULE}")
        if p in seen:
            raise UsageError(f"port name {p!r} is used twice")
        seen.add(p)
    if not 1 <= queues <= 128:
        raise UsageError(f"--queues {queues} is out of range 1..128")
    for path in [os.path.join(socket_dir, f"{p}.sock") for p in ports] + [ctl.control_path(socket_dir)]:
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise UsageError(f"socket path {path} is {len(os.fsencode(path))} bytes, over the "
                             f"{MAX_SOCKET_PATH}-byte limit of a unix socket; use a shorter --socket-dir")
    return ports


def client_ports(args: argparse.Namespace, ports: list[str]) -> list[str]:
    """The ports on which vhea is the vhost-user client: all with --connect, or those --client-ports names."""
    if args.connect and args.client_ports:
        raise UsageError("give --connect (all ports) or --client-ports, not both")
    if args.connect:
        return list(ports)
    named = [p.strip() for p in (args.client_ports or "").split(",") if p.strip()]
    for p in named:
        if p not in ports:
            raise UsageError(f"--client-ports names {p!r}, which is not in --ports")
    return named


def tap_ports(specs: list[str], ports: list[str]) -> dict[str, str | None]:
    """`--tap-port NAME[=IFNAME]` (repeatable): tap port name -> TAP device name (None: the default vh-NAME)."""
    taps: dict[str, str | None] = {}
    for spec in specs:
        name, eq, ifname = spec.partition("=")
        if not is_port_name(name):
            raise UsageError(f"bad port name {name!r} in --tap-port {spec!r}: {PORT_NAME_RULE}")
        if name in ports or name in taps:
            raise UsageError(f"port name {name!r} is used twice")
        if eq and not is_ifname(ifname):
            raise UsageError(f"bad interface name {ifname!r} in --tap-port {spec!r}: {IFNAME_RULE}")
        taps[name] = ifname if eq else None
    devices = [ifname or default_ifname(name) for name, ifname in taps.items()]
    if len(set(devices)) != len(devices):
        raise UsageError(f"two tap ports name one TAP device: {', '.join(devices)}")
    return taps


def _renamed(new: str):
    """An argparse type for a renamed flag: using it is an error that names the new one (one word, one
    meaning across the project's tools: `--duration` is measured seconds, `--repeats` whole runs)."""
    def refuse(text: str):
        raise argparse.ArgumentTypeError(f"renamed: use {new}")
    return refuse


def socket_mode(text: str) -> int:
    """`--socket-mode`: octal permissions of the port sockets (e.g. 0660, 0666)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0..0777)")
    return mode


def socket_group(name: str | None) -> int | None:
    """`--socket-group`: a group name or number -> gid (None: the group vhea runs as)."""
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"--socket-group: no group {name!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    ports = check_serve_args(args.socket_dir, args.ports, args.queues)
    clients = client_ports(args, ports)
    taps = tap_ports(args.tap_port, ports)
    try:
        server = Server(args.socket_dir, ports, args.queues, ageing=args.ageing, client_ports=clients,
                        datapath=args.datapath, flow_control=args.flow_control, pause_max_us=args.pause_max_us,
                        control=control, tap_ports=taps, socket_mode=args.socket_mode,
                        socket_group=socket_group(args.socket_group))
    except (native.NativeError, ConfigError) as e:
        raise UsageError(str(e)) from e
    try:
        server.bind()
    except OSError as e:
        server.close()
        raise UsageError(f"cannot create sockets in {args.socket_dir} or TAP devices: {e}") from e

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever()
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vhea", description="virtual HEA: a vhost-user virtio-net back-end")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the device model")
    s.add_argument("--socket-dir", required=True, help="directory for <port>.sock and control.sock")
    s.add_argument("--ports", required=True, help="comma-separated port names, e.g. a,b")
    s.add_argument("--queues", type=int, default=1, help="queue pairs per port (default 1)")
    s.add_argument("--ageing", type=float, default=300.0, help="MAC ageing time in seconds")
    s.add_argument("--connect", action="store_true",
                   help="vhost-user client role on every port: connect to <port>.sock, where the front-end "
                        "listens (QEMU server=on), and reconnect every second when it goes away")
    s.add_argument("--client-ports", help="comma-separated ports to run in the client role (the rest listen)")
    s.add_argument("--tap-port", action="append", default=[], metavar="NAME[=IFNAME]",
                   help="a tap port (repeatable): vhea creates the TAP device IFNAME (default vh-NAME) with a vnet "
                        "header and checksum/TSO offloads, down and without an address, for whoever owns the peer "
                        "to move into a namespace and configure")
    s.add_argument("--socket-mode", type=socket_mode, default=DEFAULT_SOCKET_MODE, metavar="MODE",
                   help="octal permissions of the port sockets (default 0660: owner and group; 0666 lets a "
                        "front-end of any user connect). control.sock is always 0600")
    s.add_argument("--socket-group", metavar="GROUP",
                   help="group (name or gid) of the port sockets, e.g. the group QEMU runs as")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--datapath", default="auto", choices=list(native.DATAPATHS),
                   help="native: the C inner loop (vhea/_datapath.c, built when the project is installed: "
                        "make native); python: the reference implementation; auto (default): native when it is "
                        "built and loads")
    s.add_argument("--flow-control", action="store_true",
                   help="802.3x flow control (pause) on every port: frames for a rx queue without buffers are held "
                        "and the sender's tx queue paused instead of dropping them (rx_no_buffers); change it per "
                        "port with `vhea pause on|off` (default off)")
    s.add_argument("--pause-max-us", type=int, default=DEFAULT_MAX_US,
                   help="how long a receiver may keep a sender's tx queue paused: then the frames still held for a rx "
                        "queue without buffers are dropped as rx_pause_timeout and that queue pauses nobody until it "
                        f"posts buffers again; microseconds, 1..1000000 (default {DEFAULT_MAX_US})")
    s.set_defaults(func=cmd_serve)
    ctl.add_cli_commands(sub)
    b = sub.add_parser("bench", help="measure frames/s and Gb/s through vhea against DPDK's vhost PMD")
    b.add_argument("--sizes", default="64,1518", help="frame sizes in bytes (default 64,1518)")
    b.add_argument("--duration", type=float, default=3.0, help="measured seconds per figure (default 3)")
    b.add_argument("--seconds", type=_renamed("--duration"), help=argparse.SUPPRESS)
    b.add_argument("--no-dpdk", action="store_true", help="skip the testpmd cases (and so the anchor)")
    b.add_argument("--no-python", action="store_true", help="skip the Python front-end cases")
    b.add_argument("--no-tso", action="store_true", help="skip the 64 KiB TSO frames")
    b.add_argument("--json", action="store_true", help="print JSON instead of the table")
    b.add_argument("--datapath", default="both", choices=["both", "native", "python"],
                   help="which vhea datapath(s) to measure, side by side (default both)")
    b.add_argument("--repeats", type=int, default=1,
                   help="repeat the whole run N times and print medians (the anchor too; for a noisy machine)")
    b.add_argument("--no-inprocess", action="store_true",
                   help="skip the datapath-alone rows (microbench: pre-filled rings in one process)")
    # --vm moved to `testbed bench-vm` (it boots guests); its options still parse, so that the old command
    # line gets the one line that says where it went rather than an argparse error
    b.add_argument("--vm", action="store_true", help="moved: use `testbed bench-vm`")
    b.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"], help=argparse.SUPPRESS)
    b.set_defaults(func=cmd_bench)
    return ap


def cmd_bench(args: argparse.Namespace) -> int:
    if args.vm:
        raise UsageError("the VM benchmark moved to the testbed: use `testbed bench-vm` (same options)")
    # imported here, not at the top: `vhea serve` and the control commands need none of the bench modules
    from . import bench

    return bench.cli_main(args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, getattr(args, "log_level", "info").upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"vhea: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

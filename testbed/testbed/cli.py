"""`testbed`: bring the guests and the device model up, down, show them, get a shell."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from testbed import state as st
from testbed.console import make_console, print_whole
from testbed.state import uri_host


def _add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help=f"testbed state (default $ISOSTACK_STATE_DIR or {st.DEFAULT_STATE_DIR})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Bring up guests under libvirt attached to the vhea device model, and take them down.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="build the image if needed, start the device model and the guests")
    _add_state(p_up)
    p_up.add_argument("--uri", help="libvirt URI (default: qemu:///embed?root=<state-dir>/libvirt, no daemon)")
    p_up.add_argument("--guests", type=int, default=2, help="number of guests (default 2)")
    p_up.add_argument("--vcpus", type=int, default=2, help="vCPUs per guest (default 2)")
    p_up.add_argument("--memory", type=int, default=1024, help="MiB per guest (default 1024)")
    p_up.add_argument("--queues", type=int, default=1, help="virtio-net queue pairs per guest (default 1)")
    p_up.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                      help="auto probes KVM by booting and falls back to TCG (default auto)")
    p_up.add_argument("--isolate-cpus", default="", metavar="LIST",
                      help="guest vCPUs to dedicate (e.g. 1): isolcpus, nohz_full, rcu_nocbs on them and "
                           "irqaffinity on the others, for isostackd's core (default: none)")
    p_up.add_argument("--no-flow-control", action="store_true",
                      help="start vhea without 802.3x flow control: frames for a guest without rx buffers are "
                           "dropped (rx_no_buffers) instead of pausing the sender (default: flow control on every "
                           "port, so a slow receiver does not make the sender's TCP lose whole TSO frames)")
    p_up.add_argument("--pause-max-us", type=int, metavar="US",
                      help="how long a receiver may keep a sender paused before held frames are dropped "
                           "(vhea serve --pause-max-us; default vhea's, 5000)")
    p_up.add_argument("--icount", default="", metavar="SHIFT|auto",
                      help="QEMU -icount: guest time advances 2^SHIFT ns per executed instruction (0..10), or "
                           "auto (QEMU keeps it near real time); may add ,sleep=off or ,align=on. TCG only "
                           "(refused with --accel kvm; auto then means TCG), single-threaded: all vCPUs of a "
                           "guest share one host thread (default: off, guest time is the host's)")
    peer_group = p_up.add_mutually_exclusive_group()
    peer_group.add_argument("--peer", dest="peer", action="store_const", const="on", default="auto",
                            help="require the native peer: a network namespace on the host with address "
                                 "10.10.0.254 on a TAP port of vhea, where `server: peer` tests run isoperf "
                                 "(default: make it where the host can, i.e. as root with a vhea that has TAP "
                                 "ports, and say why not elsewhere)")
    peer_group.add_argument("--no-peer", dest="peer", action="store_const", const="off",
                            help="no native peer")
    p_up.add_argument("--first-guest", type=int, default=1, metavar="N",
                      help="number the guests from N: iso-<Nth letter>, data IP 10.10.0.N, ... so that the "
                           "testbeds of several hosts share one data network (`testbed topology merge`) "
                           "(default 1)")
    p_up.add_argument("--ssh-bind", default="127.0.0.1", metavar="ADDR",
                      help="the host address the guests' SSH is forwarded from, e.g. this host's address on a "
                           "management network, so that a harness on another host reaches them (root login "
                           "with the image's key: bind only where that is safe) (default 127.0.0.1)")
    p_up.add_argument("--recreate", action="store_true",
                      help="take down a running testbed and start afresh (default: reuse it if its options match)")

    p_down = sub.add_parser(
        "down", help="stop the guests and the device model (also those of a `testbed up` that was interrupted)",
        description="Stop the guests, the supervisor that holds their libvirt connection and the device model "
                    "(vhea). Without topology.json (a `testbed up` interrupted before it wrote it) they are found "
                    "through the state dir: the supervisor is asked over its socket to stop the guests, then the "
                    "supervisor, QEMUs and vhea are signalled by their pid files (vhea also through its control "
                    "socket), but only a PID whose command line shows this state dir's process.")
    _add_state(p_down)

    p_status = sub.add_parser(
        "status", help="show guests, the peer, accel, SSH ports and device-model ports",
        description="Show the testbed of the state dir. Of a merged topology (`testbed topology merge`), each "
                    "guest's host and libvirt URI and whether it answers over SSH with its own endpoint and key; "
                    "guests on other hosts are not asked of libvirt here.")
    _add_state(p_status)

    p_topo = sub.add_parser("topology", help="topology files: merge the testbeds of several hosts into one")
    topo_sub = p_topo.add_subparsers(dest="topology_command", required=True)
    p_merge = topo_sub.add_parser(
        "merge", help="one topology from the topology.json files `testbed up` wrote on several hosts",
        description="Merge the topology.json of each host's testbed into one that the harness (`fab "
                    "run-benchmark --state-dir DIR`), `testbed ssh` and `testbed status` use across the hosts. "
                    "FILE is a testbed on this host; FILE@HOST one on HOST: its guests get HOST in their libvirt "
                    "URI and as their SSH host where their forward is on a loopback address. This host's "
                    "device model, native peer and options are the merged topology's. A guest name taken "
                    "already becomes NAME-HOST; two guests with one data IP or MAC are refused (bring the "
                    "hosts up with `testbed up --first-guest N`). See docs/testbed.md, Guests on other hosts.")
    p_merge.add_argument("inputs", nargs="+", metavar="FILE[@HOST]", help="a host's topology.json")
    p_merge.add_argument("--out", required=True, metavar="DIR/topology.json",
                         help="where to write the merged topology (its directory is the --state-dir to use)")
    p_merge.add_argument("--ssh-key", action="append", default=[], metavar="HOST=PATH",
                         help="the private key, on this host, for the guests of HOST (a copy of that host's "
                              "image key); repeatable")

    p_rdm = sub.add_parser("restart-device-model",
                           help="stop vhea and start it again with the same arguments; the guests reconnect")
    _add_state(p_rdm)

    p_ssh = sub.add_parser("ssh", help="open a shell in a guest, or run a command there")
    _add_state(p_ssh)
    p_ssh.add_argument("guest", help="guest name, e.g. iso-a")
    p_ssh.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (default: a shell)")

    p_peer = sub.add_parser(
        "peer", help="run a command natively in the peer's network namespace, e.g. `testbed peer -- ping 10.10.0.1`",
        description="Run a command (default: a shell) on the host inside the native peer's network namespace "
                    "(`ip netns exec`), where it has the peer's address on the guests' data subnet.")
    _add_state(p_peer)
    p_peer.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run after `--` (default: a shell)")

    p_img = sub.add_parser("image", help="guest image commands")
    img_sub = p_img.add_subparsers(dest="image_command", required=True)
    p_build = img_sub.add_parser("build", help="build the guest image (cached by recipe hash)")
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")

    p_bvm = sub.add_parser(
        "bench-vm", help="TCP between two guests through vhea vs tap+bridge (root; see testbed.benchvm)",
        description="Boot two plain QEMU guests on ports a, b of a `vhea serve` started here, and two on tap "
                    "devices joined by a Linux bridge in a network namespace, and run iperf3 between each pair.")
    p_bvm.add_argument("--duration", type=float, default=10.0, help="iperf3 seconds per set-up (default 10)")
    p_bvm.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"], help="accelerator")
    p_bvm.add_argument("--repeats", type=int, default=1,
                       help="measure the pair N times in alternating order and print medians (1..10)")
    p_bvm.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def cmd_up(args: argparse.Namespace, console: Console) -> int:
    from testbed.lifecycle.options import UpOptions
    from testbed.lifecycle.up import up

    opts = UpOptions(state_dir=st.state_dir(args.state_dir), uri=args.uri, guests=args.guests,
                     vcpus=args.vcpus, memory_mib=args.memory, queues=args.queues, accel=args.accel,
                     isolate_cpus=args.isolate_cpus, flow_control=not args.no_flow_control,
                     pause_max_us=args.pause_max_us, peer=args.peer, icount=args.icount,
                     first_guest=args.first_guest, ssh_bind=args.ssh_bind)
    refuse_merged(opts.state_dir, "up")
    topo = up(opts, console, recreate=args.recreate)
    print_status(console, args.state_dir)
    console.print(f"topology: {st.topology_path(Path(topo.state_dir))}")
    return 0


def refuse_merged(sdir: Path, what: str) -> None:
    """`down` and `restart-device-model` act on one host's processes, never through a merged topology."""
    path = st.topology_path(sdir)
    if path.exists() and st.Topology.load(path).merged_from:
        raise RuntimeError(f"{path} is a merged topology: {what} each host's own testbed there "
                           f"(`testbed {what} --state-dir <its state dir>`); remove {path} when done")


def cmd_down(args: argparse.Namespace, console: Console) -> int:
    from testbed.lifecycle.down import down

    refuse_merged(st.state_dir(args.state_dir), "down")
    if not down(st.state_dir(args.state_dir), console):
        console.print("no testbed is up")
    return 0


def print_status(console: Console, state_dir: str | None) -> int:
    from testbed.lifecycle.status import status

    topo, states, counters = status(st.state_dir(state_dir))
    merged = bool(topo.merged_from)
    table = Table(title=f"testbed: {len(topo.guests)} guests, accel {topo.accel}"
                        + (f", merged from {len(topo.merged_from or [])} hosts" if merged else ""))
    for col in ("guest", "state", "accel", "vCPUs", "SSH", "data IP", "vhea port", "link"):
        table.add_column(col, no_wrap=True)
    if merged:
        from testbed.lifecycle.status import ssh_reachable

        table.add_column("host", no_wrap=True)
        table.add_column("answers over SSH", no_wrap=True)
        with console.status("trying each guest over SSH"):
            answers = ssh_reachable(topo)
    ports = (counters or {}).get("ports", {})
    for g in topo.guests:
        host = topo.guest_host(g)
        link = "?" if counters is None else ("connected" if ports.get(g.port, {}).get("connected") else "down")
        ssh = topo.ssh_endpoint(g)
        row = [g.name, states[g.name], topo.accel, str(g.vcpus), f"{ssh.user}@{ssh.host}:{ssh.port}", g.data_ip,
               g.port, link if host is None else f"(vhea on {host})"]
        if merged:
            row += [host or "this host", answers[g.name]]
        table.add_row(*row)
    print_whole(console, table)
    dm = "running" if counters is not None else "NOT ANSWERING"
    if merged:
        uris: dict[str, list[str]] = {}
        for g in topo.guests:
            uris.setdefault(topo.guest_uri(g), []).append(g.name)
        for uri, names in uris.items():
            console.print(f"libvirt of {', '.join(names)}: {uri} ({uri_host(uri) or 'this host'})")
    else:
        console.print(f"libvirt: {topo.uri}")
    console.print(f"icount: {icount_line(topo.icount)}")
    console.print(f"peer: {peer_line(topo, ports if counters is not None else None)}")
    console.print(f"device model: pid {topo.device_model.pid}, {dm}, sockets in {topo.device_model.socket_dir}, "
                  f"log {topo.device_model.log}")
    return 0


def icount_line(icount: dict | None) -> str:
    """The status line of QEMU's -icount: off, or its argument and what it costs."""
    if not icount:
        return "off (guest time is the host's clock)"
    return (f"-icount {icount.get('qemu_arg')} (guest time from executed instructions; TCG thread="
            f"{icount.get('tcg_thread')}: a guest's vCPUs share one host thread)")


def peer_line(topo: st.Topology, ports: dict | None) -> str:
    """The status line of the native peer: where it is and whether its namespace and vhea port are there."""
    from testbed import peer

    p = topo.peer
    if p is None:
        return "none (`testbed up --peer` makes one)"
    ns = "" if peer.exists(p.namespace) else " [red](namespace MISSING)[/]"
    link = "?" if ports is None else ("connected" if ports.get(p.port, {}).get("connected") else "down")
    return (f"{p.address}/{p.prefix_len} on {p.interface} in namespace {p.namespace}{ns}, vhea port {p.port} "
            f"({link}); `testbed peer -- CMD` runs there")


def cmd_peer(args: argparse.Namespace, console: Console) -> int:
    from testbed import peer

    topo = st.Topology.load(st.topology_path(st.state_dir(args.state_dir)))
    if topo.peer is None:
        raise RuntimeError("this testbed has no native peer (bring it up with `testbed up --peer`)")
    if not peer.exists(topo.peer.namespace):
        raise RuntimeError(f"the peer namespace {topo.peer.namespace} is gone (`testbed up --recreate`)")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    argv = peer.exec_argv(topo.peer.namespace, cmd or [os.environ.get("SHELL", "/bin/sh")])
    os.execvp(argv[0], argv)


def cmd_restart_device_model(args: argparse.Namespace, console: Console) -> int:
    from testbed.lifecycle.restart import restart_device_model

    refuse_merged(st.state_dir(args.state_dir), "restart-device-model")
    restart_device_model(st.state_dir(args.state_dir), console)
    return 0


def cmd_ssh(args: argparse.Namespace, console: Console) -> int:
    topo = st.Topology.load(st.topology_path(st.state_dir(args.state_dir)))
    os.execvp("ssh", ssh_argv(topo, topo.guest(args.guest)) + args.cmd)


def ssh_argv(topo: st.Topology, g: st.GuestInfo) -> list[str]:
    """The ssh(1) command line to a guest, with its own endpoint and key (a merged topology's may differ)."""
    e = topo.ssh_endpoint(g)
    return ["ssh", "-i", e.key, "-p", str(e.port), "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "--", f"{e.user}@{e.host}"]


def cmd_topology(args: argparse.Namespace, console: Console) -> int:
    from testbed import merge

    keys = {}
    for item in args.ssh_key:
        host, eq, path = item.partition("=")
        if not eq or not host or not path:
            raise ValueError(f"--ssh-key {item!r}: expected HOST=PATH")
        keys[host] = str(Path(path).absolute())
    inputs = [merge.MergeInput.parse(spec) for spec in args.inputs]
    merged, notes = merge.merge([(inp, st.Topology.load(inp.path)) for inp in inputs], keys)
    out = Path(args.out)
    if out.name != "topology.json":
        raise ValueError(f"--out {out}: the file must be named topology.json (its directory is the --state-dir)")
    out.parent.mkdir(parents=True, exist_ok=True)
    merged.save(out)
    for note in notes:
        console.print(f"[yellow]note: {note}[/]")
    console.print(f"merged {len(merged.guests)} guests of {len(inputs)} hosts into {out}; "
                  f"`testbed status --state-dir {out.parent}` checks it")
    return 0


def cmd_image(args: argparse.Namespace, console: Console) -> int:
    from testbed.image.cache import ensure_image

    img = ensure_image(st.cache_root(), force=args.force, console=console)
    console.print(f"image {img.recipe_hash}: kernel {img.kernel_version} in {img.dir}")
    return 0


def cmd_bench_vm(args: argparse.Namespace, console: Console) -> int:
    from testbed.benchvm import cli_main

    return cli_main(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    handlers = {"up": cmd_up, "down": cmd_down, "status": lambda a, c: print_status(c, a.state_dir),
                "ssh": cmd_ssh, "peer": cmd_peer, "image": cmd_image, "topology": cmd_topology,
                "restart-device-model": cmd_restart_device_model, "bench-vm": cmd_bench_vm}
    try:
        return handlers[args.command](args, console)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        console.print(f"[red]testbed {args.command}: {msg}[/]")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`vhea stats`, `vhea port|coalesce|link|rate|pause|rule|rss`: the client side of the control socket.

Each command sends one JSON request to a running `vhea serve` over <socket dir>/control.sock and prints the
answer (a table, or the raw JSON with --json); an {"error": ...} answer is a UsageError. The requests are
listed, and answered, in vhea.control.
"""

from __future__ import annotations

import argparse
import json
import os
import socket

from .errors import UsageError


def control_path(socket_dir: str) -> str:
    """Where `vhea serve --socket-dir socket_dir` listens for control requests."""
    return os.path.join(socket_dir, "control.sock")


def query(socket_dir: str, request: dict, timeout: float = 5.0) -> dict:
    """Send one request to the device model in `socket_dir` and return its answer; UsageError if none answers."""
    path = control_path(socket_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise UsageError(f"no device model is listening on {path} ({e.strerror}); start `vhea serve`") from e
    except OSError as e:
        raise UsageError(f"cannot connect to {path}: {e}") from e
    with s:
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise UsageError(f"the device model on {path} closed the connection without an answer")
            buf += chunk
    return json.loads(buf)


def cmd_stats(args: argparse.Namespace) -> int:
    """Counters of every port, queue, the classifier and the switch: four tables, or the raw JSON."""
    stats = query(args.socket_dir, {"cmd": "stats"})
    if "error" in stats:
        raise UsageError(stats["error"])
    if args.json:
        print(json.dumps(stats))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"vhea ports in {args.socket_dir} ({stats.get('datapath', 'python')} datapath)")
    for col in ("port", "connected", "from guest frames", "from guest bytes", "to guest frames",
                "to guest bytes", "drops"):
        t.add_column(col, justify="right" if "frames" in col or "bytes" in col else "left")
    for name, p in stats["ports"].items():
        drops = ", ".join(f"{k}={v}" for k, v in p["drops"].items()) or "-"
        label = f"{name} (tap {p.get('ifname')})" if p.get("kind") == "tap" else name
        t.add_row(label, "yes" if p["connected"] else "no", str(p["from_guest_frames"]),
                  str(p["from_guest_bytes"]), str(p["to_guest_frames"]), str(p["to_guest_bytes"]), drops)
    q = Table(title="queues")
    for col in ("port", "queue", "frames", "bytes", "kicks", "calls", "drops"):
        q.add_column(col, justify="left" if col == "drops" else "right")
    for name, p in stats["ports"].items():
        for qs in p["queues"]:
            kind = "rx" if qs["index"] % 2 == 0 else "tx"
            q.add_row(name, f"{qs['index']} ({kind})", str(qs["frames"]), str(qs["bytes"]), str(qs["kicks"]),
                      str(qs["calls"]), ", ".join(f"{k}={v}" for k, v in qs.get("drops", {}).items()) or "-")
    f = Table(title="switch fdb")
    f.add_column("mac")
    f.add_column("port")
    for e in stats["switch"]["fdb"]:
        f.add_row(e["mac"], e["port"])
    c = Table(title="classification and link")
    for col in ("port", "link", "rule", "rss", "default", "not-ready fallback", "classified per queue",
                "tx pacing", "pause (flow control)"):
        c.add_column(col, justify="left" if col in ("port", "link", "tx pacing", "pause (flow control)") else "right")
    for name, p in stats["ports"].items():
        cl, pace = p.get("classifier"), p.get("pacing")
        if cl is None:
            continue
        rate = f"{pace['rate_bps'] / 1e9:g} Gb/s" if pace and pace["rate_bps"] else "off"
        link = p.get("link", "up")
        if link == "down":
            link += " (emulated)" if p.get("link_emulated") else " (connection closed)"
        pz = p.get("pause")
        fc = "-" if pz is None else "off" if not pz["on"] else (
            f"on ({pz['max_us']} us): {pz['events']} pauses, {pz['timeouts']} timeouts, {pz['held_frames']} held")
        if pz and pz["tx_pauses"]:
            fc += f"; tx paused {pz['tx_pauses']}x, {pz['tx_paused_us']} us"
        c.add_row(name, link, str(cl["rule"]), str(cl["rss"]), str(cl["default"]),
                  str(cl["not_ready_fallback"]), " ".join(map(str, cl["classified"])), rate, fc)
    console = Console()
    console.print(t)
    console.print(q)
    console.print(c)
    console.print(f)
    return 0


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, not {text!r}") from None


def _ask(args: argparse.Namespace, request: dict) -> dict:
    reply = query(args.socket_dir, request)
    if "error" in reply:
        raise UsageError(reply["error"])
    return reply


def _rule_line(port: str, r: dict) -> str:
    match = (f"{r['proto']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}" if r["src"] is not None
             else f"{r['proto']} dport {r['dport']}")
    return f"{port:<8} {r['id']:>4}  {match:<48} queue {r['queue']:<3} hits {r['hits']}"


def cmd_rule(args: argparse.Namespace) -> int:
    if args.action == "add":
        req = {"cmd": "rule-add", "port": args.port, "proto": args.proto, "dport": args.dport, "queue": args.queue}
        for f in ("src", "dst", "sport"):
            if getattr(args, f) is not None:
                req[f] = getattr(args, f)
        reply = _ask(args, req)
        print(json.dumps(reply) if args.json else f"rule {reply['rule']['id']} added on port {reply['port']}")
    elif args.action == "del":
        reply = _ask(args, {"cmd": "rule-del", "port": args.port, "id": args.id})
        print(json.dumps(reply) if args.json else f"rule {args.id} deleted from port {reply['port']}")
    else:
        req = {"cmd": "rule-list"} if args.port is None else {"cmd": "rule-list", "port": args.port}
        reply = _ask(args, req)
        if args.json:
            print(json.dumps(reply))
        else:
            print(f"{'port':<8} {'id':>4}  {'match':<48} target")
            for port, rules in reply["rules"].items():
                for r in rules:
                    print(_rule_line(port, r))
    return 0


def cmd_rss(args: argparse.Namespace) -> int:
    if args.action == "set":
        req: dict = {"cmd": "rss-set", "port": args.port}
        if args.key is not None:
            req["key"] = args.key
        if args.hash_types is not None:
            req["hash_types"] = [t.strip() for t in args.hash_types.split(",") if t.strip()]
        if args.reta is not None and args.queues is not None:
            raise UsageError("give --reta or --queues, not both")
        if args.reta is not None:
            req["reta"] = _ints(args.reta, "--reta")
        if args.queues is not None:
            req["queues"] = args.queues
        if len(req) == 2:
            raise UsageError("rss set needs at least one of --key, --hash-types, --reta, --queues")
        reply = _ask(args, req)
    else:
        reply = _ask(args, {"cmd": "rss-show", "port": args.port})
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"port        {reply['port']} ({reply['queues']} queue pairs)")
    print(f"key         {reply['key']}")
    print(f"hash types  {', '.join(reply['hash_types']) or '(none: every frame to queue 0)'}")
    reta = reply["reta"]
    print(f"reta        {len(reta)} entries")
    for i in range(0, len(reta), 16):
        print(f"  {i:>4}: " + " ".join(f"{q:>2}" for q in reta[i:i + 16]))
    print(f"rules       {len(reply['rules'])}")
    for r in reply["rules"]:
        print("  " + _rule_line(reply["port"], r))
    if "counters" in reply:
        c = reply["counters"]
        print(f"classified  rule {c['rule']}, rss {c['rss']}, default {c['default']}, "
              f"not-ready fallback {c['not_ready_fallback']}; per queue {c['classified']}")
    return 0


def cmd_coalesce(args: argparse.Namespace) -> int:
    if args.action == "set":
        req = {"cmd": "coalesce-set", "port": args.port, "max_frames": args.max_frames, "max_usecs": args.max_usecs}
        if args.queue is not None:
            req["queue"] = args.queue
        reply = _ask(args, req)
    else:
        reply = _ask(args, {"cmd": "coalesce-show", "port": args.port})
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"{'queue':>8} {'max frames':>10} {'max usecs':>9} {'calls saved':>11}")
    for q in reply["queues"]:
        kind = "rx" if q["queue"] % 2 == 0 else "tx"
        print(f"{q['queue']:>3} ({kind}) {q['max_frames']:>10} {q['max_usecs']:>9} {q['saved']:>11}")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    if args.emulate and args.state == "up":
        raise UsageError("--emulate goes with 'down'")
    req = {"cmd": "link-set", "port": args.port, "up": args.state == "up"}
    if args.emulate:
        req["emulate"] = True
    reply = _ask(args, req)
    if args.json:
        print(json.dumps(reply))
    elif reply["link"] == "up":
        print(f"port {reply['port']}: link up ({reply['connection']})")
    elif reply["emulated"]:
        print(f"port {reply['port']}: link down (emulated: connection kept, frames dropped; the guest keeps "
              "carrier)")
    else:
        print(f"port {reply['port']}: link down (vhost-user connection "
              f"{'closed' if reply['was_connected'] else 'not served'}: the guest sees no carrier)")
    return 0


def cmd_rate(args: argparse.Namespace) -> int:
    if args.off == (args.gbps is not None):
        raise UsageError("give --gbps RATE or --off")
    req: dict = {"cmd": "rate-set", "port": args.port, "rate_bps": 0 if args.off else round(args.gbps * 1e9)}
    if args.burst is not None:
        req["burst_bytes"] = args.burst
    reply = _ask(args, req)
    rate = f"{reply['rate_bps'] / 1e9:g} Gb/s, burst {reply['burst_bytes']} bytes" if reply["rate_bps"] else "off"
    print(f"port {reply['port']}: tx pacing {rate}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    if args.max_us is not None and args.state == "show":
        raise UsageError("--max-us goes with 'on' or 'off'")
    if args.state == "show":
        reply = _ask(args, {"cmd": "pause-show", "port": args.port})
    else:
        req: dict = {"cmd": "pause-set", "port": args.port, "on": args.state == "on"}
        if args.max_us is not None:
            req["max_us"] = args.max_us
        reply = _ask(args, req)
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"port {reply['port']}: flow control (pause) {'on' if reply['on'] else 'off'}, limit {reply['max_us']} us; "
          f"pauses {reply['events']}, timeouts {reply['timeouts']}, held now {reply['held_frames']}; its tx queues "
          f"paused {reply['tx_pauses']} times, {reply['tx_paused_us']} us in all")
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    if args.action == "add":
        if args.tap or args.ifname:
            request = {"cmd": "port-add", "name": args.name, "tap": True}
            if args.ifname:
                request["ifname"] = args.ifname
            reply = _ask(args, request)
            text = f"port {reply['port']} added: TAP device {reply['ifname']} (down, no address)"
        else:
            reply = _ask(args, {"cmd": "port-add", "name": args.name, "connect": args.connect})
            text = (f"port {reply['port']} added: {'connecting to' if args.connect else 'listening on'} "
                    f"{reply['path']}")
    else:
        reply = _ask(args, {"cmd": "port-del", "name": args.name})
        text = f"port {reply['port']} removed" + (" (its front-end was disconnected)" if reply["was_connected"]
                                                  else "")
    print(json.dumps(reply) if args.json else text)
    return 0


def add_cli_commands(sub) -> None:
    """`vhea stats`, `vhea port add|del`, `vhea coalesce show|set`, `vhea link`, `vhea rate`, `vhea pause`,
    `vhea rule add|list|del`, `vhea rss show|set` (sub: the subparsers of the `vhea` parser)."""
    st = sub.add_parser("stats", help="show counters of a running device model")
    st.add_argument("--socket-dir", required=True)
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.set_defaults(func=cmd_stats)
    po = sub.add_parser("port", help="add or remove a switch port while the device model runs")
    psub = po.add_subparsers(dest="action", required=True)
    pa = psub.add_parser("add", help="create <socket-dir>/NAME.sock and accept a front-end on it (or, --tap, "
                                     "a TAP device)")
    pa.add_argument("--name", "--port", dest="name", required=True)
    pa.add_argument("--connect", action="store_true",
                    help="client role: connect to NAME.sock, where the front-end listens (QEMU server=on)")
    pa.add_argument("--tap", action="store_true",
                    help="a tap port: a TAP device (vnet header, checksum and TSO offloads), left down without an "
                         "address for whoever owns the peer to move into a namespace and configure")
    pa.add_argument("--ifname", help="the TAP device's name (implies --tap; default vh-NAME, at most 15 characters)")
    pd = psub.add_parser("del", help="disconnect the port's front-end (or remove its TAP device), remove its "
                                     "socket, flush its MACs")
    pd.add_argument("--name", "--port", dest="name", required=True)
    for p in (pa, pd):
        p.add_argument("--socket-dir", required=True)
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")
        p.set_defaults(func=cmd_port)
    co = sub.add_parser("coalesce", help="per-queue interrupt coalescing (frames / microseconds thresholds)")
    csub = co.add_subparsers(dest="action", required=True)
    cs = csub.add_parser("set", help="hold a queue's call until max-frames frames or max-usecs (0 0 = off)")
    cs.add_argument("--port", required=True)
    cs.add_argument("--queue", type=int, help="ring index (2i rx, 2i+1 tx of pair i); default all")
    cs.add_argument("--max-frames", type=int, required=True)
    cs.add_argument("--max-usecs", type=int, required=True)
    csh = csub.add_parser("show", help="settings and calls saved per queue")
    csh.add_argument("--port", required=True)
    for p in (cs, csh):
        p.add_argument("--socket-dir", required=True)
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")
        p.set_defaults(func=cmd_coalesce)
    li = sub.add_parser(
        "link", help="take a port's link down or up (the guest sees carrier go off and on)",
        description="down: vhea closes the port's vhost-user connection and serves no new one; QEMU then sets the "
                    "guest NIC's link down (config interrupt, VIRTIO_NET_S_LINK_UP cleared: no carrier, "
                    "operstate down) and retries its connection every second (reconnect=1). Frames to the port "
                    "are dropped as link_down. up: the next connection is served, QEMU replays the handshake "
                    "and the guest sees carrier again (within about a second); TCP connections survive. "
                    "A client-role port (--connect) does not reconnect while down.")
    li.add_argument("state", choices=["up", "down"])
    li.add_argument("--port", required=True)
    li.add_argument("--emulate", action="store_true",
                    help="with down: keep the connection and drop frames both ways as link_down; the guest keeps "
                         "carrier (for front-ends that cannot reconnect, e.g. DPDK's vhost PMD)")
    li.add_argument("--socket-dir", required=True)
    li.add_argument("--json", action="store_true", help="print the raw JSON answer")
    li.set_defaults(func=cmd_link)
    ra = sub.add_parser("rate", help="pace a port's transmit at a line rate (token bucket; off by default)")
    ra.add_argument("action", choices=["set"])
    ra.add_argument("--port", required=True)
    ra.add_argument("--gbps", type=float, help="rate in Gb/s (10 models the HEA's 10GbE link)")
    ra.add_argument("--burst", type=int, help="bucket depth in bytes (default 1 ms at the rate, >= 64 KiB)")
    ra.add_argument("--off", action="store_true", help="no pacing")
    ra.add_argument("--socket-dir", required=True)
    ra.set_defaults(func=cmd_rate)
    pa = sub.add_parser(
        "pause", help="802.3x flow control (pause) of a port as a receiver: hold frames instead of dropping them",
        description="on: when a rx queue of the port has no buffers for a frame, the frame is not dropped "
                    "(rx_no_buffers) but held, in order with the rest of its tx batch, and the sending port's tx "
                    "queue is not pulled until the held frames are delivered: the sender's ring fills and its "
                    "qdisc and TCP slow down instead of losing segments. Frames of that tx queue to other ports "
                    "wait behind the held ones, as on a paused link. A tx queue stays paused at most --max-us: then "
                    "the frames still held for a rx queue without buffers are dropped (rx_pause_timeout) and that "
                    "queue pauses nobody until it posts buffers again. "
                    "show: settings and counters.")
    pa.add_argument("state", choices=["on", "off", "show"])
    pa.add_argument("--port", required=True)
    pa.add_argument("--max-us", type=int,
                    help="pause limit in microseconds (1..1000000; default that of `vhea serve --pause-max-us`)")
    pa.add_argument("--socket-dir", required=True)
    pa.add_argument("--json", action="store_true", help="print the raw JSON answer")
    pa.set_defaults(func=cmd_pause)
    rule = sub.add_parser("rule", help="exact-match flow rules of a port (proto + dport, or 5-tuple -> queue)")
    rsub = rule.add_subparsers(dest="action", required=True)
    add = rsub.add_parser("add", help="add a rule: --proto tcp --dport 5001 --queue 1 [--src --dst --sport]")
    add.add_argument("--port", required=True)
    add.add_argument("--proto", required=True, choices=["tcp", "udp"])
    add.add_argument("--dport", required=True, type=int, help="destination port (the guest's)")
    add.add_argument("--queue", required=True, type=int, help="queue pair index")
    add.add_argument("--src", help="5-tuple form: source address (the sender's)")
    add.add_argument("--dst", help="5-tuple form: destination address (the guest's)")
    add.add_argument("--sport", type=int, help="5-tuple form: source port")
    lst = rsub.add_parser("list", help="list rules (all ports or one)")
    lst.add_argument("--port")
    dl = rsub.add_parser("del", help="delete a rule by id")
    dl.add_argument("--port", required=True)
    dl.add_argument("--id", required=True, type=int)
    for p in (add, lst, dl):
        p.add_argument("--socket-dir", required=True)
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")
        p.set_defaults(func=cmd_rule)
    rss = sub.add_parser("rss", help="RSS settings of a port: Toeplitz key, hash types, indirection table")
    ssub = rss.add_subparsers(dest="action", required=True)
    show = ssub.add_parser("show", help="key, hash types, RETA, rules and classifier counters of a port")
    show.add_argument("--port", required=True)
    st = ssub.add_parser("set", help="change the key, hash types or RETA of a port")
    st.add_argument("--port", required=True)
    st.add_argument("--key", help="40 bytes as 80 hex digits")
    st.add_argument("--hash-types", help="comma-separated subset of ipv4,tcp4,udp4,ipv6,tcp6,udp6 ('' = none)")
    st.add_argument("--reta", help="comma-separated queue numbers, a power-of-two count (e.g. 0,1,0,1)")
    st.add_argument("--queues", type=int, help="spread the RETA round-robin over queues 0..N-1")
    for p in (show, st):
        p.add_argument("--socket-dir", required=True)
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")
        p.set_defaults(func=cmd_rss)

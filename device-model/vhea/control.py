"""Control-socket commands for classification (one JSON object per line in, one out).

    {"cmd": "rule-add", "port": "a", "proto": "tcp", "dport": 5001, "queue": 1}            proto + dst port
    {"cmd": "rule-add", "port": "a", "proto": "udp", "src": "10.10.0.1", "dst": "10.10.0.2",
     "sport": 4000, "dport": 9000, "queue": 1}                                            5-tuple
    {"cmd": "rule-list"} / {"cmd": "rule-list", "port": "a"}
    {"cmd": "rule-del", "port": "a", "id": 3}
    {"cmd": "rss-show", "port": "a"}      -> queues, key (hex), hash_types, reta, rules, counters
    {"cmd": "rss-set", "port": "a", "key": "<80 hex digits>", "hash_types": ["ipv4", "tcp4"],
     "reta": [0, 1, 0, 1], "queues": 2}   (any subset; reta and queues exclude each other)
    {"cmd": "coalesce-set", "port": "a", "queue": 0, "max_frames": 32, "max_usecs": 100}   (no queue: all)
    {"cmd": "coalesce-show", "port": "a"}
    {"cmd": "link-set", "port": "a", "up": false}      closes the port's vhost-user connection and serves no new
                                                       one until up: QEMU sets the guest NIC's link down (no
                                                       carrier); see Server.set_link
    {"cmd": "link-set", "port": "a", "up": false, "emulate": true}   connection kept, frames dropped as link_down,
                                                       the guest keeps carrier (front-ends that cannot reconnect)
    {"cmd": "link-set", "port": "a", "up": true}       serves the next connection: QEMU reconnects, link up
    {"cmd": "rate-set", "port": "a", "rate_bps": 10000000000, "burst_bytes": 1250000}   (0 = off; see pacing.py)
    {"cmd": "pause-set", "port": "b", "on": true, "max_us": 5000}   802.3x flow control of port b as a receiver:
                                                       frames for a rx queue without buffers are held and their
                                                       tx queue paused, up to max_us (optional); see pause.py
    {"cmd": "pause-show", "port": "b"}                 its settings and counters (also in stats)
    {"cmd": "port-add", "name": "c"}                   creates <socket dir>/c.sock and accepts a front-end on it
    {"cmd": "port-add", "name": "c", "connect": true}  client role: connects to c.sock (QEMU server=on), reconnects
    {"cmd": "port-del", "name": "c"}                   disconnects, frees the mappings, removes the socket, flushes
                                                       the port's MAC entries

Answers are {"ok": true, ...} or {"error": "<one line a user can act on>"}; a rejected change changes nothing.
Runs in the server's loop thread, so no locking against the data path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .classifier import ConfigError

if TYPE_CHECKING:
    from .server import Server

COMMANDS = ("rule-add", "rule-list", "rule-del", "rss-show", "rss-set", "coalesce-set", "coalesce-show", "link-set",
            "rate-set", "pause-set", "pause-show", "port-add", "port-del")


def _port(server: Server, req: dict, required: bool = True):
    name = req.get("port")
    if name is None and not required:
        return None
    if not isinstance(name, str) or name not in server.ports:
        raise ConfigError(f"unknown port {name!r}; ports: {', '.join(server.ports)}")
    return server.ports[name]


def handle(server: Server, req: dict) -> dict:
    try:
        return _handle(server, req)
    except ConfigError as e:
        return {"error": str(e)}


def _only(req: dict, *fields: str) -> None:
    """Refuse a request with fields other than cmd and `fields`."""
    unknown = set(req) - {"cmd", *fields}
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(sorted(unknown))}")


def _port_name(server: Server, req: dict) -> str:
    from .cli import MAX_SOCKET_PATH, PORT_NAME

    name = req.get("name")
    if not isinstance(name, str) or not PORT_NAME.match(name) or name == "control":
        raise ConfigError(f"bad port name {name!r}: use 1-32 letters, digits, '-' or '_' (not 'control')")
    path = os.path.join(server.socket_dir, f"{name}.sock")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {path} is over the {MAX_SOCKET_PATH}-byte limit of a unix socket")
    return name


def _handle(server: Server, req: dict) -> dict:
    cmd = req["cmd"]
    if cmd == "port-add":
        _only(req, "name", "connect")
        name = _port_name(server, req)
        if name in server.ports:
            raise ConfigError(f"port {name!r} exists; ports: {', '.join(server.ports)}")
        client = req.get("connect", False)
        if not isinstance(client, bool):
            raise ConfigError("connect must be true or false")
        try:
            port = server.add_port(name, client=client)
        except OSError as e:
            raise ConfigError(f"cannot create port {name!r}: {e}") from None
        return {"ok": True, "port": name, "path": port.path, "role": "client" if client else "server"}
    if cmd == "port-del":
        name = req.get("name")
        if not isinstance(name, str) or name not in server.ports:
            raise ConfigError(f"unknown port {name!r}; ports: {', '.join(server.ports)}")
        was_connected = server.ports[name].conn is not None
        server.del_port(name)
        return {"ok": True, "port": name, "was_connected": was_connected}
    if cmd == "rule-list":
        port = _port(server, req, required=False)
        ports = [port] if port is not None else list(server.ports.values())
        return {"ok": True, "rules": {p.name: [r.to_json() for r in p.classifier.rules.values()] for p in ports}}
    port = _port(server, req)
    cls = port.classifier
    if cmd == "rule-add":
        _only(req, "port", "proto", "src", "dst", "sport", "dport", "queue")
        for f in ("proto", "dport", "queue"):
            if f not in req:
                raise ConfigError(f"rule-add needs {f}")
        rule = cls.add_rule(req["proto"], req["dport"], req["queue"], req.get("src"), req.get("dst"),
                            req.get("sport"))
        return {"ok": True, "port": port.name, "rule": rule.to_json()}
    if cmd == "rule-del":
        rule = cls.del_rule(req.get("id"))
        return {"ok": True, "port": port.name, "deleted": rule.to_json()}
    if cmd == "rss-show":
        return {"ok": True, "port": port.name, **cls.settings(), "counters": cls.stats()}
    if cmd == "rss-set":
        _only(req, "port", "key", "hash_types", "reta", "queues")
        key = req.get("key")
        if key is not None:
            try:
                key = bytes.fromhex(key)
            except (TypeError, ValueError):
                raise ConfigError(f"the key must be hex digits, not {key!r}") from None
        hash_types = req.get("hash_types")
        if hash_types is not None and not isinstance(hash_types, list):
            raise ConfigError("hash_types must be a list")
        cls.set_rss(key=key, hash_types=hash_types, reta=req.get("reta"), queues=req.get("queues"))
        return {"ok": True, "port": port.name, **cls.settings()}
    if cmd == "coalesce-set":
        for f in ("max_frames", "max_usecs"):
            if f not in req:
                raise ConfigError(f"coalesce-set needs {f}")
        port.coalescer.set(req["max_frames"], req["max_usecs"], req.get("queue"))
        return {"ok": True, "port": port.name, "queues": port.coalescer.settings()}
    if cmd == "coalesce-show":
        return {"ok": True, "port": port.name, "queues": port.coalescer.settings()}
    if cmd == "link-set":
        _only(req, "port", "up", "emulate")
        up = req.get("up")
        if not isinstance(up, bool):
            raise ConfigError("link-set needs up: true or false")
        emulate = req.get("emulate", False)
        if not isinstance(emulate, bool):
            raise ConfigError("emulate must be true or false")
        if emulate and up:
            raise ConfigError("emulate goes with up: false (link down with the connection kept)")
        was_connected = port.conn is not None
        server.set_link(port, up, emulate)
        return {"ok": True, "port": port.name, "link": "up" if up else "down", "emulated": port.link_emulated,
                "was_connected": was_connected, "connection": port.connection_state()}
    if cmd == "rate-set":
        if "rate_bps" not in req:
            raise ConfigError("rate-set needs rate_bps (0 = off)")
        port.pacer.set(req["rate_bps"], req.get("burst_bytes"))
        return {"ok": True, "port": port.name, **port.pacer.settings()}
    if cmd == "pause-set":
        _only(req, "port", "on", "max_us")
        on = req.get("on")
        if not isinstance(on, bool):
            raise ConfigError("pause-set needs on: true or false")
        server.set_pause(port, on, req.get("max_us"))
    if cmd in ("pause-set", "pause-show"):
        return {"ok": True, "port": port.name, **server.stats()["ports"][port.name]["pause"]}
    raise ConfigError(f"unknown cmd {cmd!r}")


# ---- the `vhea rule` and `vhea rss` command lines (registered by cli.parser) ----------------------------------


def _ints(text: str, what: str) -> list[int]:
    from .cli import UsageError

    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, not {text!r}") from None


def _ask(args, request: dict) -> dict:
    from .cli import UsageError, query

    reply = query(args.socket_dir, request)
    if "error" in reply:
        raise UsageError(reply["error"])
    return reply


def _rule_line(port: str, r: dict) -> str:
    match = (f"{r['proto']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}" if r["src"] is not None
             else f"{r['proto']} dport {r['dport']}")
    return f"{port:<8} {r['id']:>4}  {match:<48} queue {r['queue']:<3} hits {r['hits']}"


def cmd_rule(args) -> int:
    import json

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


def cmd_rss(args) -> int:
    import json

    from .cli import UsageError

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


def cmd_coalesce(args) -> int:
    import json

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


def cmd_link(args) -> int:
    import json

    from .cli import UsageError

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


def cmd_rate(args) -> int:
    from .cli import UsageError

    if args.off == (args.gbps is not None):
        raise UsageError("give --gbps RATE or --off")
    req: dict = {"cmd": "rate-set", "port": args.port, "rate_bps": 0 if args.off else round(args.gbps * 1e9)}
    if args.burst is not None:
        req["burst_bytes"] = args.burst
    reply = _ask(args, req)
    rate = f"{reply['rate_bps'] / 1e9:g} Gb/s, burst {reply['burst_bytes']} bytes" if reply["rate_bps"] else "off"
    print(f"port {reply['port']}: tx pacing {rate}")
    return 0


def cmd_pause(args) -> int:
    import json

    from .cli import UsageError

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


def cmd_port(args) -> int:
    import json

    if args.action == "add":
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
    """`vhea port add|del`, `vhea coalesce show|set`, `vhea link`, `vhea rate`, `vhea pause`, `vhea rule add|list|del`,
    `vhea rss show|set`."""
    po = sub.add_parser("port", help="add or remove a switch port while the device model runs")
    psub = po.add_subparsers(dest="action", required=True)
    pa = psub.add_parser("add", help="create <socket-dir>/NAME.sock and accept a front-end on it")
    pa.add_argument("--name", required=True)
    pa.add_argument("--connect", action="store_true",
                    help="client role: connect to NAME.sock, where the front-end listens (QEMU server=on)")
    pd = psub.add_parser("del", help="disconnect the port's front-end, remove its socket, flush its MACs")
    pd.add_argument("--name", required=True)
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

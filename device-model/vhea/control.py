"""The control API of a running device model: classification, coalescing, link, pacing, pause and ports
(one JSON object per line in, one out).

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
    {"cmd": "port-add", "name": "p", "tap": true, "ifname": "vh-p"}   a tap port: creates the TAP device (ifname
                                                       default "vh-" + name), DOWN, no address, in vhea's namespace
    {"cmd": "port-del", "name": "c"}                   disconnects, frees the mappings, removes the socket, flushes
                                                       the port's MAC entries

Answers are {"ok": true, ...} or {"error": "<one line a user can act on>"}; a rejected change changes nothing.
Runs in the server's loop thread, so no locking against the data path. This is the server side only: the
server calls handle() for a cmd in COMMANDS when built with Server(..., control=vhea.control); the command
lines that send these requests are vhea.ctl.
"""

from __future__ import annotations

import os

from .errors import MAX_SOCKET_PATH, PORT_NAME_RULE, ConfigError, is_port_name
from .server import Port, Server
from .tap import IFNAME_RULE, default_ifname, is_ifname

COMMANDS = ("rule-add", "rule-list", "rule-del", "rss-show", "rss-set", "coalesce-set", "coalesce-show", "link-set",
            "rate-set", "pause-set", "pause-show", "port-add", "port-del")


#: settings of a guest port's queues that a tap port does not have
_NOT_FOR_TAP_PORTS = ("rule-add", "rss-set", "coalesce-set", "rate-set", "pause-set")


def _port(server: Server, req: dict, required: bool = True) -> Port | None:
    name = req.get("port")
    if name is None and not required:
        return None
    if not isinstance(name, str) or name not in server.ports:
        raise ConfigError(f"unknown port {name!r}; ports: {', '.join(server.ports)}")
    return server.ports[name]


def handle(server: Server, request: dict) -> dict:
    """The answer to one control request (its cmd is one of COMMANDS): {"ok": true, ...} or {"error": ...}."""
    try:
        return _handle(server, request)
    except ConfigError as e:
        return {"error": str(e)}


def _only(req: dict, *fields: str) -> None:
    """Refuse a request with fields other than cmd and `fields`."""
    unknown = set(req) - {"cmd", *fields}
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(sorted(unknown))}")


def _port_name(server: Server, req: dict) -> str:
    name = req.get("name")
    if not is_port_name(name):
        raise ConfigError(f"bad port name {name!r}: {PORT_NAME_RULE}")
    path = os.path.join(server.socket_dir, f"{name}.sock")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {path} is over the {MAX_SOCKET_PATH}-byte limit of a unix socket")
    return name


def _add_tap_port(server: Server, name: str, req: dict) -> dict:
    if req.get("tap") is not True:
        raise ConfigError("tap must be true (ifname names the TAP device of a tap port)")
    if req.get("connect", False):
        raise ConfigError("a tap port has no vhost-user role: give tap or connect, not both")
    ifname = req.get("ifname")
    if ifname is None:
        ifname = default_ifname(name)
    if not is_ifname(ifname):
        raise ConfigError(f"bad interface name {ifname!r}: {IFNAME_RULE}")
    if any(p.ifname == ifname for p in server.ports.values()):
        raise ConfigError(f"TAP device {ifname!r} belongs to another port")
    try:
        port = server.add_tap_port(name, ifname)
    except OSError as e:
        raise ConfigError(f"cannot create TAP device {ifname!r} for port {name!r}: {e}") from None
    return {"ok": True, "port": name, "kind": "tap", "ifname": port.ifname}


def _handle(server: Server, req: dict) -> dict:
    cmd = req["cmd"]
    if cmd == "port-add":
        _only(req, "name", "connect", "tap", "ifname")
        name = _port_name(server, req)
        if name in server.ports:
            raise ConfigError(f"port {name!r} exists; ports: {', '.join(server.ports)}")
        if req.get("tap", False) is not False or "ifname" in req:
            return _add_tap_port(server, name, req)
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
    if port.ifname is not None and cmd in _NOT_FOR_TAP_PORTS:
        raise ConfigError(f"port {port.name!r} is a tap port (one queue, written as the kernel takes it): "
                          f"{cmd} does not apply")
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

"""isostackd's attach messages (isostack/attach.py, the geometry in isostack/layout.py).

Contract: parse_hello, parse_watch and parse_reply raise AttachError and nothing else, whatever the bytes;
a hello that parses encodes back to the same Hello (Hello.encode is the front-end's serializer).

Input: one byte of mode and fd count, then either the message text as is (mode even) or, mode odd, choices
that build an attach request with odd geometry values (huge, negative, non-finite, strings, lists), which
random bytes rarely spell as JSON.
"""

from __future__ import annotations

import json

from isostack.attach import AttachError, parse_hello, parse_reply, parse_watch

from .reader import Reader

TARGETS = ("isostack.attach", "isostack.layout")

ODD_VALUES = [0, 1, -1, 2, 64, 4096, 65536, 1 << 26, 1 << 64, 10**400, 1.5, 1e308, float("inf"), float("-inf"),
              float("nan"), "64", "0x40", " 64 ", "", None, True, [], {}, [64], "1" * 5000]
GEOMETRY_KEYS = ("max_sockets", "cmdq_slots", "tx_size", "rx_size", "notif_slots", "notif_rings")
GOOD = {"max_sockets": 4, "cmdq_slots": 64, "tx_size": 4096, "rx_size": 4096, "notif_slots": 1024, "notif_rings": 1}


def _built(r: Reader) -> bytes:
    geometry = dict(GOOD)
    for key in GEOMETRY_KEYS:
        if r.u8() & 1:
            geometry[key] = r.pick(ODD_VALUES)
    msg = {"type": r.pick(["attach", "watch", "unwatch", "attached", "error", 1, None]),
           "version": r.pick([1, 1, 1, 2, "1", None, 1.0]),
           "geometry": geometry if r.u8() & 3 else r.pick(ODD_VALUES),
           "pid": r.pick([1, 0, -1, 2**70, "1", None, 1.5]),
           "name": r.pick(["app", "", "x" * 100, None, 7]),
           "sock": r.pick([0, 1, 3, 4, -1, 2**64, "0", None, True, 0.0]),
           "app": 1, "message": "m"}
    for key in list(msg):
        if r.u8() % 7 == 0:
            del msg[key]
    return json.dumps(msg, allow_nan=True).encode()


def one_input(data: bytes) -> None:
    r = Reader(data)
    mode = r.u8()
    nfds = mode >> 1 & 7
    text = _built(r) if mode & 1 else r.rest()
    try:
        hello = parse_hello(text, nfds)
    except AttachError:
        pass
    else:
        assert nfds == 1 + hello.geometry.notif_rings
        assert parse_hello(hello.encode(), nfds) == hello
        assert hello.geometry.total_size > 0
    for max_sockets in (1, 4):
        try:
            kind, sock = parse_watch(text, nfds & 1, max_sockets)
        except AttachError:
            pass
        else:
            assert kind in ("watch", "unwatch") and 0 <= sock < max_sockets
    try:
        reply = parse_reply(text)
    except AttachError:
        pass
    else:
        assert reply["type"] == "attached"

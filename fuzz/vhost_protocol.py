"""The vhost-user message parser and request handler (vhea/protocol.py, handler.py, session.py), driving the
real device (vhea/net_backend.py) as a front-end would, fds and all.

Contract: MessageParser.feed and BackendHandler.handle raise ProtocolError and nothing else, whatever the
bytes, the way they are cut into reads and the fds that come with them; every message re-packs to the bytes
it was parsed from; every reply is one well-formed reply to its request; no fd leaks (each is consumed or
closed, also when the session ends half-way); a ring the session made ready can be walked (RingError only).

Input: the queue pairs, then a plan of reads (count, then per read: its length and the fds that come with it,
eventfds or 64 KiB memfds), then the byte stream the front-end sends, cut into those reads (the rest in one).
"""

from __future__ import annotations

import os

from vhea.handler import BackendHandler
from vhea.net_backend import NetBackend
from vhea.protocol import FLAG_REPLY, MessageParser, ProtocolError, pack_message
from vhea.vring import RingError

from .reader import Reader

TARGETS = ("vhea.protocol", "vhea.handler", "vhea.session", "vhea.net_backend", "vhea.memory")
MEMFD_SIZE = 1 << 16


def _fds(spec: int) -> list[int]:
    fds = []
    for _ in range(spec & 3):
        if spec & 4:
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
            os.ftruncate(fd, MEMFD_SIZE)
        else:
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        fds.append(fd)
    return fds


def _check_reply(request: int, reply: bytes) -> None:
    msgs = MessageParser().feed(reply)
    assert len(msgs) == 1 and msgs[0].request == request and msgs[0].header.flags & FLAG_REPLY, (request, reply)


def _walk(dev: NetBackend) -> None:
    """What the server does with ready rings: pull frames from tx rings, push one into an rx ring."""
    for ring in dev.rings:
        if not ring.ready:
            continue
        try:
            if ring.index % 2:
                dev.pull_tx(ring, [], {}, 8)
            else:
                dev.push_rx(ring, bytes(60))
        except RingError:
            ring.stop("fuzz")


def one_input(data: bytes) -> None:
    before = len(os.listdir("/proc/self/fd"))
    r = Reader(data)
    dev = NetBackend(1 + (r.u8() & 1), "fuzz")
    handler = BackendHandler("fuzz", dev)
    parser = MessageParser()
    reads = [(r.u16() % 4097, r.u8()) for _ in range(r.u8() % 33)]
    stream = r.rest()
    pos = 0
    pending = []
    try:
        for length, spec in [*reads, (len(stream), 0)]:
            chunk = stream[pos:pos + length]
            pos += len(chunk)
            for msg in parser.feed(chunk, _fds(spec)):
                pending.append(msg)
                assert len(msg.payload) == msg.header.size
                assert pack_message(msg.request, msg.payload, msg.header.flags) == msg.header.pack() + msg.payload
            while pending:
                msg = pending.pop(0)
                reply = handler.handle(msg)
                if reply is not None:
                    _check_reply(msg.request, reply)
            _walk(dev)
            if pos >= len(stream):
                break
    except ProtocolError:
        pass  # the connection closes: below, as the server does
    finally:
        for msg in pending:
            msg.close_fds()
        parser.close_pending()
        handler.close()
    after = len(os.listdir("/proc/self/fd"))
    assert after <= before, f"{after - before} fd(s) leaked"

"""The isoperf server: one session per control connection, on its own stack (`--stack`: kernel sockets, or
IsoStack receiving and answering through isostackd) whatever the client's.

The server answers: it opens a data listener per session, runs the workers the test needs (receivers for
stream, senders for maerts, responders for rr/crr), snapshots its counters and /proc/stat at the client's
marks and sends back the result.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import NamedTuple

from . import sockets
from .cpu import CpuTimes, cpu_busy_percent, read_proc_stat
from .errors import IsoperfError
from .protocol import (
    CONTROL_TIMEOUT,
    DEFAULT_PORT,
    HELLO,
    HELLO_MAGIC,
    PROTOCOL_VERSION,
    TRANSACTION_TESTS,
    Control,
    RunParams,
)
from .transactions import CRRServer, RRServer
from .workers import Receiver, Sender, Worker, join_all


def _accept_data(listener: socket.socket, params: RunParams, timeout: float) -> list[socket.socket]:
    """Accept the session's N data connections and order them by the index in their hello."""
    listener.settimeout(timeout)
    socks: dict[int, socket.socket] = {}
    while len(socks) < params.connections:
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            raise IsoperfError(
                f"only {len(socks)} of {params.connections} data connections arrived within {timeout:.0f}s"
            ) from None
        sock.settimeout(timeout)
        hello = b""
        while len(hello) < HELLO.size:
            chunk = sock.recv(HELLO.size - len(hello))
            if not chunk:
                break
            hello += chunk
        if len(hello) != HELLO.size:
            sock.close()
            continue
        magic, index = HELLO.unpack(hello)
        if magic != HELLO_MAGIC or index >= params.connections or index in socks:
            sock.close()
            continue
        sock.settimeout(None)
        socks[index] = sock
    return [socks[i] for i in range(params.connections)]


class Mark(NamedTuple):
    """The server's counters at one of the client's marks."""

    t: float
    bytes: int
    cpu: dict[str, CpuTimes]


def _intervals(marks: list[Mark]) -> list[dict]:
    """Figures between consecutive marks: bytes, elapsed seconds, busy % per CPU."""
    return [
        {"bytes": b1 - b0, "elapsed": round(t1 - t0, 6), "cpu": cpu_busy_percent(c0, c1)}
        for (t0, b0, c0), (t1, b1, c1) in zip(marks, marks[1:], strict=False)
    ]


def _start_message(ctrl: Control) -> RunParams:
    """The session's parameters from the client's start message; an error goes back to the client too."""
    msg = ctrl.recv()
    try:
        if msg["type"] != "start":
            raise IsoperfError(f"expected 'start', got {msg['type']!r}")
        if msg.get("version") != PROTOCOL_VERSION:
            raise IsoperfError(f"protocol version {msg.get('version')!r} not supported (want {PROTOCOL_VERSION})")
        return RunParams.from_message(msg)
    except IsoperfError as e:
        ctrl.send(type="error", message=str(e))
        raise


def serve_session(ctrl_sock: socket.socket, bind: str, _corrupt_byte: int | None = None,
                  stack: str = "legacy") -> dict:
    """Run one test for the client on ctrl_sock; returns the result sent to it (for logging/tests). `stack` is
    the server's data sockets' stack (the control connection is a kernel socket either way).

    `_corrupt_byte` is a test hook: flip one bit at that offset of what the server sends on connection 0
    (maerts: the stream; rr/crr: the responses).
    """
    ctrl = Control(ctrl_sock)
    params = _start_message(ctrl)

    try:
        listener = sockets.listen(bind, max(128, params.connections + 4), stack)
    except IsoperfError as e:
        ctrl.send(type="error", message=str(e))
        raise
    stop = threading.Event()
    workers: list[Worker] = []
    socks: list[socket.socket] = []
    try:
        ctrl.send(type="ready", data_port=listener.getsockname()[1])
        if params.test == "crr":
            listener.settimeout(0.2)
            workers = [CRRServer(listener, i, params, stop, _corrupt_byte) for i in range(params.connections)]
        else:
            try:
                socks = _accept_data(listener, params, CONTROL_TIMEOUT)
            except IsoperfError as e:
                ctrl.send(type="error", message=str(e))
                raise
            listener.close()
            for i, s in enumerate(socks):
                corrupt = _corrupt_byte if i == 0 else None
                if params.test == "stream":
                    workers.append(Receiver(s, i, params))
                elif params.test == "maerts":
                    workers.append(Sender(s, i, params, stop, corrupt))
                else:
                    sockets.set_nodelay(s)
                    workers.append(RRServer(s, i, params, corrupt))
        for w in workers:
            w.start()
        ctrl.send(type="accepted")

        marks: list[Mark] = []
        phases: list[str] = []
        while True:
            # after its last mark the client may spend CONTROL_TIMEOUT joining its workers (senders blocked on a
            # full socket) before it says done: wait longer than that, or the server gives up first
            msg = ctrl.recv(timeout=params.warmup + params.duration + 2 * CONTROL_TIMEOUT)
            if msg["type"] == "mark":
                marks.append(Mark(time.monotonic(), sum(w.progress().bytes for w in workers), read_proc_stat()))
                phases.append(str(msg.get("phase", "")))
            elif msg["type"] == "done":
                break
            else:
                raise IsoperfError(f"unexpected control message {msg['type']!r}")
        stop.set()  # maerts senders and crr acceptors stop; stream/rr connections end at the client's EOF
        join_all(workers, CONTROL_TIMEOUT)
        if params.test == "maerts":
            for s in socks:
                s.close()  # FIN after the queued data: the client's receivers reach EOF
    finally:
        stop.set()
        listener.close()

    errors = [w.error for w in workers if w.error]
    if any(w.is_alive() for w in workers):
        errors.append("a data connection did not end in time")
    if len(marks) != params.intervals + 1 or phases[:1] != ["begin"] or phases[-1:] != ["end"]:
        errors.append(f"the client marked {phases} instead of begin, {params.intervals - 1} split(s), end")
        marks = marks[:1] * 2 if marks else [Mark(0.0, 0, {})] * 2
    total = sum(w.bytes for w in workers)
    sent = msg.get("sent_bytes")
    if params.test == "stream" and sent is not None and sent != total:
        errors.append(f"received {total} bytes but the client sent {sent}")
    client_tx = msg.get("transactions")
    if params.test in TRANSACTION_TESTS and isinstance(client_tx, list):
        if params.test == "crr":
            served = [sum(w.per_connection.get(i, 0) for w in workers) for i in range(params.connections)]
        else:
            served = [w.count for w in workers]
        if served != client_tx:
            errors.append(f"served {served} transactions per connection but the client completed {client_tx}")
    verified = None
    if params.verify:
        for w in workers:
            errors.extend(w.errors)
        verified = not errors
    whole = _intervals([marks[0], marks[-1]])[0]
    result = {
        "type": "result",
        "stack": stack,
        "bytes": whole["bytes"],
        "elapsed": whole["elapsed"],
        "cpu": whole["cpu"],
        "intervals": _intervals(marks),
        "total_bytes": total,
        "per_connection_bytes": [w.bytes for w in workers],
        "transactions": [w.count for w in workers] if params.test == "rr" else None,
        "verified": verified,
        "errors": errors,
    }
    ctrl.send(**result)
    return result


def _tell_client(sock: socket.socket, message: str) -> None:
    """Best effort: the client learns why its session failed before the connection closes."""
    try:
        sock.settimeout(1.0)
        sock.sendall(json.dumps({"type": "error", "message": message}).encode() + b"\n")
    except OSError:
        pass


def run_server(bind: str = "0.0.0.0", port: int = DEFAULT_PORT, once: bool = False, ready=None,
               _corrupt_byte: int | None = None, data_bind: str | None = None, stack: str = "legacy") -> int:
    """Serve sessions one after another; `ready` (a callable, for tests) gets the bound port.

    The control port listens on `bind`; each session's data listener on `data_bind` (default `bind`), so the
    control connection can come over a management network while the data takes the link under test.
    """
    data_bind = data_bind or bind
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((bind, port))
    except OSError as e:
        raise IsoperfError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
    listener.listen(8)
    bound = listener.getsockname()[1]
    print(f"isoperf server listening on {bind}:{bound}", flush=True)
    if ready is not None:
        ready(bound)
    status = 0
    try:
        while True:
            sock, peer = listener.accept()
            try:
                result = serve_session(sock, data_bind, _corrupt_byte, stack)
                print(
                    f"session from {peer[0]}: {result['bytes']} bytes in {result['elapsed']:.3f}s, "
                    f"errors={len(result['errors'])}",
                    flush=True,
                )
                status = 1 if result["errors"] else 0
            except (IsoperfError, OSError) as e:
                print(f"session from {peer[0]} failed: {e}", file=sys.stderr, flush=True)
                _tell_client(sock, str(e))
                status = 1
            finally:
                sock.close()
            if once:
                return status
    finally:
        listener.close()
        if stack == "iso":
            sockets.detach_isostack()  # isostackd frees this process's queues at once

"""The isoperf client: the session's timekeeper, and the figures of the result it returns.

"stack": "iso" routes the client's *data* connections through the IsoStack front-end (sockets.py); the
control connection stays a kernel socket, and the server serves kernel sockets whatever the stack (IsoStack
is the client side's stack in every test).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from array import array
from dataclasses import asdict, dataclass

from . import sendloop, sockets
from .cpu import CpuTimes, check_cpu, cpu_busy_percent, read_proc_stat
from .errors import IsoperfError
from .protocol import CONTROL_TIMEOUT, HELLO, HELLO_MAGIC, PROTOCOL_VERSION, TRANSACTION_TESTS, Control, RunParams
from .stats import latency_histogram, latency_summary, mean_stddev
from .transactions import CRRClient, RRClient
from .workers import Receiver, Sender, Worker, join_all


@dataclass
class Mark:
    """The client's counters at one mark."""

    t: float
    bytes: int
    count: int
    lengths: list[int]
    cpu: dict[str, CpuTimes]


def snapshot(workers: list[Worker]) -> Mark:
    progress = [w.progress() for w in workers]
    return Mark(
        t=time.monotonic(),
        bytes=sum(p.bytes for p in progress),
        count=sum(p.count for p in progress),
        lengths=[len(w.samples) for w in workers],
        cpu=read_proc_stat(),
    )


def figures(params: RunParams, workers: list[Worker], a: Mark, b: Mark, server: dict) -> dict:
    """The result figures of the measured interval between marks a and b (server: its view of it)."""
    if params.test == "stream":  # what the receiving side counted, on its own clock
        elapsed, nbytes = float(server["elapsed"]), int(server["bytes"])
    else:
        elapsed, nbytes = round(b.t - a.t, 6), b.bytes - a.bytes
    out = {
        "duration": elapsed,
        "bytes": nbytes,
        "throughput_bps": round(nbytes * 8 / elapsed, 1) if elapsed > 0 else 0.0,
        "cpu": {"client": cpu_busy_percent(a.cpu, b.cpu), "server": server.get("cpu", {})},
    }
    if params.test in TRANSACTION_TESTS:
        tx = b.count - a.count
        samples = array("q")
        for w, i0, i1 in zip(workers, a.lengths, b.lengths, strict=True):
            samples.extend(w.samples[i0:i1])
        out["messages"] = out["transactions"] = tx
        out["messages_per_s"] = out["transactions_per_s"] = round(tx / elapsed, 1) if elapsed > 0 else 0.0
        out["latency_us"] = latency_summary(samples)
        out["latency_histogram"] = latency_histogram(samples)
    else:
        out["messages"] = nbytes // params.size
        out["messages_per_s"] = round(nbytes / params.size / elapsed, 1) if elapsed > 0 else 0.0
    return out


def summary(per_repeat: list[dict]) -> dict:
    """Mean and stddev of the figures over the measured intervals."""
    keys = ["throughput_bps", "messages_per_s"]
    out = {k: mean_stddev([r[k] for r in per_repeat]) for k in keys}
    if per_repeat and "latency_us" in per_repeat[0]:
        out["transactions_per_s"] = out["messages_per_s"]
        for p in ("p50", "p99"):
            out[f"latency_{p}_us"] = mean_stddev([r["latency_us"][p] for r in per_repeat])
    return out


def _sleep_watching(ctrl: Control, seconds: float) -> None:
    """Sleep, but fail fast if the server reports an error or drops the control connection."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([ctrl.sock], [], [], left)
        if readable:
            msg = ctrl.recv()
            if msg["type"] == "error":
                raise IsoperfError(f"server: {msg.get('message', 'unknown error')}")
            raise IsoperfError(f"unexpected {msg['type']!r} from the server during the test")


def run_client(
    host: str,
    port: int,
    params: RunParams,
    connect_timeout: float = 5.0,
    _corrupt_byte: int | None = None,
    cpu: int | None = None,
    send_loop: str = "auto",
    sndbuf: int | None = None,
    control: tuple[str, int] | None = None,
) -> dict:
    """Run one test against an isoperf server and return the result dict.

    `cpu` pins the worker threads (one per connection) to that CPU. `send_loop` (auto|c|python) is the loop
    around the stream senders' sendall calls (see Sender). `sndbuf` sets SO_SNDBUF on the data sockets before
    any data (netperf's -s): it bounds the bytes a connection has in flight. `control` is the server's control
    address when it is not (host, port): a management network, so that the link under test carries only the
    data connections (their loss and back-off cannot starve the control exchange). `_corrupt_byte` is a test hook:
    flip one bit at that offset of what connection 0 sends (stream: the stream; rr/crr: the requests).
    """
    params.check()
    if cpu is not None:
        check_cpu(cpu)
    loop_kind = sendloop.resolve(send_loop) if params.test == "stream" and not params.verify else None
    ctrl_host, ctrl_port = control or (host, port)
    ctrl = Control(sockets.connect(ctrl_host, ctrl_port, connect_timeout))
    data_socks: list = []
    workers: list[Worker] = []
    stop = threading.Event()
    test = params.test
    iso_stats: dict | None = None
    end_errors: list[str] = []
    try:
        ctrl.send(type="start", version=PROTOCOL_VERSION, **asdict(params))
        try:
            ready = ctrl.expect("ready")
        except IsoperfError as e:
            if str(e).startswith("server:"):
                raise
            raise IsoperfError(f"no isoperf server at {ctrl_host}:{ctrl_port} ({e})") from None
        data_port = int(ready["data_port"])
        if test != "crr":
            for i in range(params.connections):
                s = sockets.connect(host, data_port, connect_timeout, params.stack)
                s.settimeout(None)
                if sndbuf is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                if test == "rr":
                    sockets.set_nodelay(s)
                data_socks.append(s)
                try:
                    s.sendall(HELLO.pack(HELLO_MAGIC, i))
                except OSError as e:
                    said = ctrl.last_words()
                    raise IsoperfError(f"data connection {i}: the hello failed ({e.strerror or e})"
                                       + (f"; the server said: {said}" if said else "")) from None
        ctrl.expect("accepted")

        for i in range(params.connections):
            corrupt = _corrupt_byte if i == 0 else None
            if test == "stream":
                workers.append(Sender(data_socks[i], i, params, stop, corrupt, cpu, loop_kind or "python"))
            elif test == "maerts":
                workers.append(Receiver(data_socks[i], i, params, cpu))
            elif test == "rr":
                workers.append(RRClient(data_socks[i], i, params, stop, corrupt, cpu))
            else:
                workers.append(CRRClient(host, data_port, i, params, stop, connect_timeout, corrupt, cpu))
        for w in workers:
            w.start()
        _sleep_watching(ctrl, params.warmup)
        ctrl.send(type="mark", phase="begin")
        marks = [snapshot(workers)]
        for r in range(params.intervals):
            _sleep_watching(ctrl, params.duration)
            ctrl.send(type="mark", phase="end" if r == params.intervals - 1 else "split")
            marks.append(snapshot(workers))
        stop.set()
        if test != "maerts":
            join_all(workers, CONTROL_TIMEOUT)
            for i, s in enumerate(data_socks):
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError as e:  # the connection broke (reset): the session still ends with the figures
                    end_errors.append(f"connection {i}: shutdown failed: {e}")
        done = {"sent_bytes": sum(w.bytes for w in workers) if test == "stream" else None}
        if test in TRANSACTION_TESTS:
            done["transactions"] = [w.count for w in workers]
        ctrl.send(type="done", **done)
        server = ctrl.expect("result", timeout=CONTROL_TIMEOUT + params.duration)
        if test == "maerts":  # the server closed its side after the result's figures were taken
            join_all(workers, CONTROL_TIMEOUT)
    finally:
        stop.set()
        for s in data_socks:
            s.close()
        ctrl.sock.close()
        if params.stack == "iso":
            iso_stats = sockets.isostack_stats()
            sockets.detach_isostack()

    errors = [w.error for w in workers if w.error]
    errors += [f"connection {w.index} did not stop in time" for w in workers if w.is_alive()]
    errors += end_errors
    errors += list(server.get("errors", []))
    client_total = sum(w.bytes for w in workers)
    server_total = server.get("total_bytes")
    if test != "stream" and server_total != client_total:  # stream: the server compares
        what = "received" if test == "maerts" else "moved"
        errors.append(f"the client {what} {client_total} bytes but the server {server_total}")
    verified = server.get("verified")
    if params.verify and test != "stream":
        client_errors = [e for w in workers for e in w.errors]
        errors += client_errors
        verified = not errors
    intervals = server.get("intervals") or []
    if len(intervals) != params.intervals:
        intervals = [{"elapsed": 0.0, "bytes": 0, "cpu": {}}] * params.intervals
        errors.append("the server reported no measured intervals")
    per_repeat = [figures(params, workers, marks[i], marks[i + 1], intervals[i]) for i in range(params.intervals)]
    whole = figures(params, workers, marks[0], marks[-1], server)
    result = {
        "test": test,
        "stack": params.stack,
        "server_stack": server.get("stack", "legacy"),  # servers before --stack served kernel sockets only
        "size": params.size,
        "response_size": params.rsize if test in TRANSACTION_TESTS else None,
        "connections": params.connections,
        **whole,
        "requested_duration": params.duration,
        "warmup": params.warmup,
        "interval_count": params.intervals,
        "cpu_binding": cpu,
        "send_loop": loop_kind,
        "sndbuf": sndbuf,
        "verified": verified,
        "errors": errors,
        "client_sent_bytes": marks[-1].bytes - marks[0].bytes,
        "client_total_bytes": client_total,
        "server_total_bytes": server_total,
        "intervals": per_repeat,
        "summary": summary(per_repeat),
        "protocol_version": PROTOCOL_VERSION,
    }
    if params.stack == "iso" and iso_stats is not None:
        msgs = client_total // params.size if params.size else 0
        for k in ("send_posts", "kicks", "doorbells_rung"):
            iso_stats[f"{k}_per_msg"] = round(iso_stats[k] / msgs, 4) if msgs else None
        result["isostack"] = iso_stats
    return result

"""Where an RR transaction's microseconds go: the hops of 64-byte request/response transactions through
IsoStack, from isostackd's hop trace (ISOSTACKD_TRACE, isostack/dispatcher/trace.py) and this process's and
the echo peer's own timestamps, next to the same transactions on kernel sockets.

    python -m isoperf.rrtrace [--transactions 20000] [--size 64] [--dispatcher-cpu C] [--busy-poll-us N]

It starts an echo peer (a kernel-socket process on 127.0.0.1 that stamps each request as it has read it, just
before it answers) and an isostackd with the trace on, runs the transactions on one connection (first on kernel
sockets, then through IsoStack) and prints, per hop, the median, p90 and p99 in microseconds:

    app send -> tx seen      the application's sendall until the dispatcher's drain that found the request
    tx seen -> peer read     the request's way to the peer (the kernel send), until the peer has read it
    peer read -> kernel ev   the peer's send, until the dispatcher's epoll returns the response's event
    kernel ev -> rx filled   the kernel receive into the rx ring
    rx filled -> app woke    the application sees the data (it spins on the ring, or sleeps on its doorbell)
    total                    the application's send until it has read the response
and, beside the chain: tx seen -> tx sent (the drain call; on a loopback it can include the peer's turn when the
peer it woke runs on the dispatcher's CPU) and rx filled -> notified (the notification post, which a spinning
application does not wait for).

All timestamps are CLOCK_MONOTONIC (one clock for every process here). A hop whose events could not be
matched (e.g. the trace's record limit) leaves that transaction out; the count says how many were matched.
"""

from __future__ import annotations

import argparse
import bisect
import os
import socket
import subprocess
import sys
import tempfile
import time

ECHO = r"""
import socket, sys, time
size = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(4)
print(srv.getsockname()[1], flush=True)
clock = time.monotonic_ns
while True:
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(size)
    view = memoryview(buf)
    stamps = []
    while True:
        got = 0
        while got < size:
            k = c.recv_into(view[got:])
            if not k:
                break
            got += k
        if got < size:
            break
        stamps.append(clock())
        c.sendall(buf)
    c.close()
    print(" ".join(map(str, stamps)), flush=True)
"""

ISO_HOPS = ("app send -> tx seen", "tx seen -> peer read", "peer read -> kernel ev", "kernel ev -> rx filled",
            "rx filled -> app woke", "total", "tx seen -> tx sent", "rx filled -> notified")
KERNEL_HOPS = ("app send -> peer read", "peer read -> app woke", "total")


def transactions(sock, size: int, n: int) -> tuple[list[int], list[int]]:
    """n request/response transactions; (send start, response read) in monotonic ns for each."""
    msg = b"q" * size
    buf = bytearray(size)
    view = memoryview(buf)
    clock = time.monotonic_ns
    posted, woke = [], []
    for _ in range(n):
        t0 = clock()
        sock.sendall(msg)
        got = 0
        while got < size:
            k = sock.recv_into(view[got:], size - got)
            if not k:
                raise ConnectionError("the echo peer closed")
            got += k
        woke.append(clock())
        posted.append(t0)
    return posted, woke


def percentiles(values: list[float]) -> tuple[float, float, float]:
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")  # noqa: E731
    return pick(0.5), pick(0.9), pick(0.99)


def _after(times: list[int], t: int) -> int | None:
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def iso_hops(records, posted: list[int], peer: list[int], woke: list[int], skip: int) -> dict[str, list[float]]:
    """Match each transaction's events in the trace (the first of each kind after the previous hop)."""
    from isostack.dispatcher import trace as T

    by_kind: dict[int, list[int]] = {}
    seen_at: dict[int, int] = {}  # tx_sent time -> the start of its drain (recorded just before it)
    previous = None
    for t, event, _slot in records:
        by_kind.setdefault(event, []).append(t)
        if event == T.TX_SENT and previous is not None and previous[1] == T.TX_SEEN:
            seen_at[t] = previous[0]
        previous = (t, event)
    for times in by_kind.values():
        times.sort()
    hops: dict[str, list[float]] = {h: [] for h in ISO_HOPS}
    hops["peer read inside the send"] = []  # 1 when the peer had read before the dispatcher's send returned
    for i in range(skip, min(len(posted), len(peer), len(woke))):
        sent = _after(by_kind.get(T.TX_SENT, []), posted[i])
        if sent is None or sent > woke[i]:
            continue
        seen = max(seen_at.get(sent, sent), posted[i])  # a drain that began just before the post found it
        event = _after(by_kind.get(T.KERNEL_EVENT, []), peer[i])
        filled = _after(by_kind.get(T.RX_FILLED, []), event) if event is not None else None
        if filled is None or filled > woke[i]:
            continue
        notified = _after(by_kind.get(T.NOTIFIED, []), filled)  # may come after the application woke
        chain = (posted[i], seen, peer[i], event, filled, woke[i])
        for name, a, b in zip(ISO_HOPS[:5], chain[:-1], chain[1:], strict=True):
            hops[name].append((b - a) / 1e3)
        hops["total"].append((woke[i] - posted[i]) / 1e3)
        hops["tx seen -> tx sent"].append((sent - seen) / 1e3)
        if notified is not None:
            hops["rx filled -> notified"].append((notified - filled) / 1e3)
        hops["peer read inside the send"].append(1.0 if peer[i] < sent else 0.0)
    return hops


def kernel_hops(posted: list[int], peer: list[int], woke: list[int], skip: int) -> dict[str, list[float]]:
    hops: dict[str, list[float]] = {h: [] for h in KERNEL_HOPS}
    for i in range(skip, min(len(posted), len(peer), len(woke))):
        hops["app send -> peer read"].append((peer[i] - posted[i]) / 1e3)
        hops["peer read -> app woke"].append((woke[i] - peer[i]) / 1e3)
        hops["total"].append((woke[i] - posted[i]) / 1e3)
    return hops


def _peer_stamps(echo) -> list[int]:
    return [int(x) for x in echo.stdout.readline().split()]


def run(n: int, size: int, dispatcher_cpu: int | None, busy_poll_us: int) -> dict[str, dict[str, list[float]]]:
    import isostack
    from isostack.dispatcher import trace as T
    from isostack.frontend import Stack

    skip = min(n // 10, 1000)  # warm-up
    echo = subprocess.Popen([sys.executable, "-c", ECHO, str(size)], stdout=subprocess.PIPE, text=True)
    tmp = tempfile.mkdtemp(prefix="isostack-rrtrace-")
    path, trace_path = os.path.join(tmp, "isostackd.sock"), os.path.join(tmp, "trace")
    disp = None
    try:
        port = int(echo.stdout.readline())
        k = socket.create_connection(("127.0.0.1", port))
        k.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        posted, woke = transactions(k, size, n)
        k.close()
        out = {"kernel": kernel_hops(posted, _peer_stamps(echo), woke, skip)}
        cmd = [sys.executable, "-m", "isostack.dispatcher", "--socket", path, "--allow-shared", "--no-placement",
               "--busy-poll-us", str(busy_poll_us), "--log-level", "WARNING"]
        if dispatcher_cpu is not None:
            cmd += ["--cpu", str(dispatcher_cpu)]
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(isostack.__file__))))
        env[T.ENV] = trace_path
        disp = subprocess.Popen(cmd, env=env)
        for _ in range(500):
            if os.path.exists(path):
                break
            time.sleep(0.02)
        with Stack(path) as stack:
            s = stack.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            posted, woke = transactions(s, size, n)
            s.close()
        peer = _peer_stamps(echo)
        disp.terminate()
        disp.wait()
        disp = None
        out["iso"] = iso_hops(T.read(trace_path), posted, peer, woke, skip)
        return out
    finally:
        if disp is not None:
            disp.kill()
            disp.wait()
        echo.kill()
        echo.wait()
        for name in ("trace", "isostackd.sock"):
            try:
                os.unlink(os.path.join(tmp, name))
            except OSError:
                pass
        os.rmdir(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m isoperf.rrtrace",
                                description="per-hop latency of RR transactions through IsoStack vs kernel sockets")
    p.add_argument("--transactions", type=int, default=20000,
                   help="transactions on each stack; the first tenth (at most 1000) is warm-up (default 20000)")
    p.add_argument("--size", type=int, default=64, help="request and response size in bytes (default 64)")
    p.add_argument("--dispatcher-cpu", type=int, default=None,
                   help="isostackd's --cpu (default: isostackd's own choice)")
    p.add_argument("--busy-poll-us", type=int, default=1000, help="isostackd's --busy-poll-us (default 1000, "
                                                                   "isostackd's own default)")
    args = p.parse_args(argv)
    if args.transactions < 10:
        p.error("--transactions must be at least 10")
    out = run(args.transactions, args.size, args.dispatcher_cpu, args.busy_poll_us)
    for stack, hops in out.items():
        inside = hops.pop("peer read inside the send", None)
        print(f"{stack}: {len(hops['total'])} transactions matched; microseconds")
        print(f"  {'hop':<24} {'p50':>8} {'p90':>8} {'p99':>8}")
        for name, values in hops.items():
            p50, p90, p99 = percentiles(values)
            print(f"  {name:<24} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f}")
        if inside:
            print(f"  the peer had read before the dispatcher's send returned in {sum(inside) / len(inside):.0%}"
                  " of them (it ran on the dispatcher's CPU, or the other CPU was quicker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

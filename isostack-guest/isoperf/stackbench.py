"""The stack-only benchmark: queue operation costs, and small messages through IsoStack vs plain kernel sockets.

    python -m isoperf.stackbench --queues          # ops/s of the shared-memory queues (justifies the C helper)
    python -m isoperf.stackbench [--size 64] [--duration 3] [--socket PATH] [--send-loop python|c]
                                 [--direction send|recv|both]

The benchmark runs, in one invocation, a TCP sink and a TCP source, each a separate process on 127.0.0.1, and
  * kernel: the application thread calls socket.sendall(size bytes) in a loop (send), or recv_into(buf, size)
    until EOF while the source sends for --duration (recv);
    (--send-loop c: isoperf's C loop around the same sendall calls, for both stacks);
  * iso:    the same loops through the IsoStack front-end, served by an isostackd subprocess (started here
            on --dispatcher-cpu unless --socket names a running one).
For each it prints messages/s (counted by the sink, or received), the CPU seconds consumed by the application
thread (time.thread_time) and by the dispatcher (utime+stime from /proc/PID/stat), per message and in total,
messages per consumed CPU-second, and the iso/kernel ratios of messages/s and of messages per CPU-second
(the seed's goal: >= 10x per consumed CPU for 64-byte messages).

It measures the runtime from above, as isoperf does, so it lives here and imports isostack lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array

from . import sendloop

SINK = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(16)
print(srv.getsockname()[1], flush=True)
buf = bytearray(1 << 20)
while True:
    c, _ = srv.accept()
    n = 0
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        n += k
    c.close()
    print(n, flush=True)
"""


SOURCE = r"""
import socket, sys, time
duration = float(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(16)
print(srv.getsockname()[1], flush=True)
chunk = b"m" * (1 << 16)
while True:
    c, _ = srv.accept()
    n = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        c.sendall(chunk)
        n += len(chunk)
    c.close()
    print(n, flush=True)
"""


def _proc_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queue_bench(n: int = 200_000) -> dict:
    """ops/s of the MPSC command queue (CAS via ctypes) and of the pure-Python SPSC notification ring."""
    from isostack import native
    from isostack.layout import Geometry
    from isostack.queues import CommandQueue, NotifyRing, Region, create_memfd

    g = Geometry(max_sockets=1, cmdq_slots=1024, notif_slots=1024, tx_size=4096, rx_size=4096)
    fd = create_memfd(g.total_size)
    r = Region(fd, g.total_size)
    os.close(fd)
    out = {}
    try:
        cq = CommandQueue(r, g.control_off(0) // 8, g.cmdq_off(0), g.cmdq_slots)
        cq.init()
        body = bytes(48)
        t0 = time.perf_counter()
        for _ in range(n // 512):
            for _ in range(512):
                cq.push_body(body)
            for _ in range(512):
                cq.poll()
                cq.release()
        dt = time.perf_counter() - t0
        out["mpsc_push_pop_per_s"] = round((n // 512) * 512 / dt)
        nr = NotifyRing(r, g.notif_off, g.notif_slots, 32, 24, 27)
        t0 = time.perf_counter()
        for _ in range(n // 512):
            for _ in range(512):
                nr.post(1, 1, 1)
            nr.drain()
        dt = time.perf_counter() - t0
        out["spsc_post_drain_per_s"] = round((n // 512) * 512 / dt)
        addr = r.base + 64 * 8
        t0 = time.perf_counter()
        for _ in range(n):
            native.xchg64(addr, 1)
        impl = "extension" if native.FAST is not None else "ctypes"
        out[f"xchg_ns_{impl}"] = round((time.perf_counter() - t0) / n * 1e9)
        q = r.q
        t0 = time.perf_counter()
        for _ in range(n):
            q[64] = 1
        out["python_store_ns"] = round((time.perf_counter() - t0) / n * 1e9)
    finally:
        r.close()
    return out


def _sender(send, msg: bytes, stop: threading.Event, res: dict, loop: str) -> None:
    n = 0
    t0 = time.thread_time()
    if loop == "c":  # isoperf's C loop (_sendloop.c): the same send per message, no interpreter around it
        calls = array("Q", [0])
        n = sendloop.load()(send, msg, stop.is_set, calls)
    else:
        while not stop.is_set():
            for _ in range(64):
                send(msg)
            n += 64
    res["cpu"] = time.thread_time() - t0
    res["sent"] = n


def _run(label: str, make_sock, port: int, sink, size: int, duration: float, disp_pid: int | None,
         loop: str) -> dict:
    s = make_sock(port)
    msg = b"m" * size
    stop = threading.Event()
    res: dict = {}
    d0 = _proc_cpu(disp_pid) if disp_pid else 0.0
    t0 = time.monotonic()
    th = threading.Thread(target=_sender, args=(s.sendall, msg, stop, res, loop))
    th.start()
    time.sleep(duration)
    stop.set()
    th.join()
    s.close()
    received = int(sink.stdout.readline())
    elapsed = time.monotonic() - t0
    d1 = _proc_cpu(disp_pid) if disp_pid else 0.0
    msgs = received // size
    assert received == res["sent"] * size, (received, res["sent"] * size)
    app_us = res["cpu"] / msgs * 1e6
    disp_us = (d1 - d0) / msgs * 1e6
    return {"stack": label, "direction": "send", "loop": loop, "size": size, "messages": msgs,
            "msgs_per_s": round(msgs / elapsed),
            "app_cpu_s": round(res["cpu"], 3), "dispatcher_cpu_s": round(d1 - d0, 3),
            "app_cpu_us_per_msg": round(app_us, 3), "dispatcher_cpu_us_per_msg": round(disp_us, 3),
            "msgs_per_cpu_s": round(1e6 / (app_us + disp_us)), "elapsed_s": round(elapsed, 3)}


def _receiver(recv_into, size: int, res: dict) -> None:
    buf = bytearray(size)
    n = 0
    t0 = time.thread_time()
    while True:
        k = recv_into(buf, size)
        if not k:
            break
        n += k
    res["cpu"] = time.thread_time() - t0
    res["received"] = n


def _run_recv(label: str, make_sock, port: int, source, size: int, disp_pid: int | None) -> dict:
    """The receive direction: the source sends for its duration and closes; the application takes `size`
    bytes per recv_into call until EOF (a message per call, as the send direction sends one per call)."""
    d0 = _proc_cpu(disp_pid) if disp_pid else 0.0
    t0 = time.monotonic()
    s = make_sock(port)
    res: dict = {}
    th = threading.Thread(target=_receiver, args=(s.recv_into, size, res))
    th.start()
    th.join()
    elapsed = time.monotonic() - t0
    s.close()
    sent = int(source.stdout.readline())
    d1 = _proc_cpu(disp_pid) if disp_pid else 0.0
    assert res["received"] == sent, (res["received"], sent)
    msgs = sent // size
    app_us = res["cpu"] / msgs * 1e6
    disp_us = (d1 - d0) / msgs * 1e6
    return {"stack": label, "direction": "recv", "loop": "python", "size": size, "messages": msgs,
            "msgs_per_s": round(msgs / elapsed), "app_cpu_s": round(res["cpu"], 3),
            "dispatcher_cpu_s": round(d1 - d0, 3), "app_cpu_us_per_msg": round(app_us, 3),
            "dispatcher_cpu_us_per_msg": round(disp_us, 3), "msgs_per_cpu_s": round(1e6 / (app_us + disp_us)),
            "elapsed_s": round(elapsed, 3)}


def send_bench(size: int, duration: float, path: str | None, dispatcher_cpu: int | None,
               busy_poll_us: int, locks: bool, loop: str = "python", directions: tuple[str, ...] = ("send",)
               ) -> list[dict]:
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    port = int(sink.stdout.readline())
    source = subprocess.Popen([sys.executable, "-c", SOURCE, str(duration)], stdout=subprocess.PIPE, text=True)
    source_port = int(source.stdout.readline())
    disp = None
    tmp = None
    try:
        rows = []
        kernel_connect = lambda p: socket.create_connection(("127.0.0.1", p))  # noqa: E731
        if "send" in directions:
            rows.append(_run("kernel", kernel_connect, port, sink, size, duration, None, loop))
        if "recv" in directions:
            rows.append(_run_recv("kernel", kernel_connect, source_port, source, size, None))
        if path is None:
            tmp = tempfile.mkdtemp(prefix="isostack-bench-")
            path = os.path.join(tmp, "isostackd.sock")
            cmd = [sys.executable, "-m", "isostack.dispatcher", "--socket", path, "--allow-shared", "--no-placement",
                   "--busy-poll-us", str(busy_poll_us), "--log-level", "WARNING"]
            if dispatcher_cpu is not None:
                cmd += ["--cpu", str(dispatcher_cpu)]
            if locks:
                cmd.append("--uncontended-locks")
            import isostack

            env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(isostack.__file__))))
            disp = subprocess.Popen(cmd, env=env)
            for _ in range(200):
                if os.path.exists(path):
                    break
                time.sleep(0.02)
        from isostack.frontend import Stack

        stack = Stack(path)
        pid = disp.pid if disp else int(stack.info["pid"])
        label = "iso-locks" if locks else "iso"
        iso_connect = lambda p: stack.create_connection(("127.0.0.1", p))  # noqa: E731
        try:
            if "send" in directions:
                row = _run(label, iso_connect, port, sink, size, duration, pid, loop)
                row.update(stack.stats())
                rows.append(row)
            if "recv" in directions:
                rows.append(_run_recv(label, iso_connect, source_port, source, size, pid))
        finally:
            stack.close()
        return rows
    finally:
        if disp:
            disp.terminate()
            disp.wait()
        for helper in (sink, source):
            helper.kill()
            helper.wait()
        if tmp:
            try:
                os.rmdir(tmp)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m isoperf.stackbench")
    p.add_argument("--queues", action="store_true", help="queue micro-benchmark only")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--socket", default=None, help="use a running isostackd instead of starting one")
    p.add_argument("--dispatcher-cpu", type=int, default=None)
    p.add_argument("--app-cpu", type=int, default=None, help="pin this process (the application) to a CPU")
    p.add_argument("--busy-poll-us", type=int, default=-1)
    p.add_argument("--uncontended-locks", action="store_true")
    p.add_argument("--send-loop", choices=("python", "c"), default="python",
                   help="the loop around the per-message sendall calls, for both stacks: python (64 calls per "
                        "stop check) or isoperf's C loop (_sendloop.c)")
    p.add_argument("--direction", choices=("send", "recv", "both"), default="both",
                   help="send: the application sends to a sink; recv: a source sends to the application, which "
                        "takes --size bytes per recv_into call; both (default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.app_cpu is not None:
        os.sched_setaffinity(0, {args.app_cpu})
    if args.queues:
        res = queue_bench()
        print(json.dumps(res) if args.json else "\n".join(f"{k:>24}: {v}" for k, v in res.items()))
        return 0
    directions = ("send", "recv") if args.direction == "both" else (args.direction,)
    rows = send_bench(args.size, args.duration, args.socket, args.dispatcher_cpu, args.busy_poll_us,
                      args.uncontended_locks, args.send_loop, directions)
    if args.json:
        print(json.dumps(rows))
        return 0
    cols = ["stack", "direction", "loop", "size", "msgs_per_s", "app_cpu_s", "dispatcher_cpu_s", "app_cpu_us_per_msg",
            "dispatcher_cpu_us_per_msg", "msgs_per_cpu_s"]
    print("  ".join(f"{c:>{max(len(c), 8)}}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>{max(len(c), 8)}}" for c in cols))
    for r in rows:
        base = next(b for b in rows if b["stack"] == "kernel" and b["direction"] == r["direction"])
        if r is not base:
            print(f"{r['stack']}/kernel {r['direction']}: {r['msgs_per_s'] / base['msgs_per_s']:.2f}x messages/s, "
                  f"{r['msgs_per_cpu_s'] / base['msgs_per_cpu_s']:.2f}x messages per consumed CPU-second")
    for r in rows:
        if "send_posts" in r:
            print(f"iso doorbells rung {r['doorbells_rung']}, saved {r['doorbells_saved']}, kicks {r['kicks']},"
                  f" SEND commands posted {r['send_posts']}"
                  f" ({r['send_posts'] / max(r['messages'], 1):.5f} per message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A well-behaved application's throughput through isostackd, alone and while a hostile one hammers it.

    python -m isoperf.hostilebench [--duration 2] [--repeats 5] [--size 16384] [--burner] [--json]
    python -m isoperf.hostilebench --hammer PATH      # only the hostile application (the chaos tests use it)

It starts an isostackd and a kernel TCP sink (as stackbench does), then runs `--repeats` pairs of
`--duration`-second streams of `--size`-byte sendall calls through the front-end, interleaved: alone, then
with the hostile application running, and so on.  It prints the sink-counted MB/s of every run, the median of
each kind and their ratio (the goal of issue 12: the good application keeps >= 80 % of its throughput alone).

The hostile application (`--hammer`) attaches and keeps one socket's large command queue full of valid
commands (GETSOCKOPT), never waiting for a result, and first posts a corrupt entry on another socket, which
isostackd must fail alone (it prints "cut-off ERRNO" once it sees that socket fail, then "pushed N" every
second).  isostackd's per-pass budgets are what keep it from starving the others: the time its commands may
take in one pass (--app-budget-us, a deficit round-robin) before the others' data path.

`--burner` adds a third kind of run, interleaved with the two: the good application beside a process that
only burns CPU the way the hammer does (a loop of sched_yield), not touching isostackd.  Its ratio to that
run is the hammer's cost beyond the CPU it takes on a shared machine (the fair baseline on a small box).

The machine matters: with fewer than three CPUs the three busy processes (dispatcher, good and hostile
application) share cores, and the ratio then also measures the CPU scheduler.  `--cpus` pins them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from .stackbench import SINK

BURNER = "import os\nwhile True:\n    os.sched_yield()\n"
HAMMER_GEOMETRY = {"max_sockets": 4, "cmdq_slots": 16384, "tx_size": 1 << 12, "rx_size": 1 << 12, "notif_rings": 1}
BAD_OPCODE = 0xFFFF


def hammer(path: str) -> int:
    """The hostile application (see the module docstring); runs until killed."""
    from isostack import native
    from isostack.frontend import Stack
    from isostack.layout import BODY, C_ERR, C_STATE, ST_ERROR, Geometry, Op

    stack = Stack(path, Geometry(**HAMMER_GEOMETRY), name="hostile")
    inst = stack.instances[0]
    victim = stack.socket()
    vslot = victim._slot
    inst.queues[vslot].push_body(BODY.pack(BAD_OPCODE, 0, vslot, 0, 0, 0, b""))
    inst.flag_pending(vslot)
    control = stack.geometry.control_off(vslot) // 8
    deadline = time.monotonic() + 10
    while not inst.words[control + C_STATE] & ST_ERROR and time.monotonic() < deadline:
        time.sleep(0.001)
    print("cut-off", inst.words[control + C_ERR] if inst.words[control + C_STATE] & ST_ERROR else 0, flush=True)
    slot = stack.socket()._slot
    queue = inst.queues[slot]
    body = BODY.pack(Op.GETSOCKOPT, 0, slot, socket.SOL_SOCKET, socket.SO_ERROR, 0, b"")
    push, tail, slots, nslots = native.mpsc_push, queue.tail_addr, queue.slots_addr, queue.nslots
    pushed = 0
    report = time.monotonic() + 1
    while True:
        while push(tail, slots, nslots, body) >= 0:
            pushed += 1
        inst.flag_pending(slot)
        os.sched_yield()  # hostile to isostackd, not to the CPU scheduler (see the module docstring)
        if time.monotonic() >= report:
            print("pushed", pushed, flush=True)
            report += 1


def _guest_env() -> dict:
    import isostack

    return dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(isostack.__file__))))


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def _stream(path: str, port: int, sink, size: int, duration: float) -> float:
    """One run of the good application: MB/s delivered to the sink."""
    from isostack.frontend import Stack

    stack = Stack(path, name="good")
    try:
        s = stack.create_connection(("127.0.0.1", port), timeout=30)
        msg = b"g" * size
        t0 = time.monotonic()
        end = t0 + duration
        while time.monotonic() < end:
            for _ in range(16):
                s.sendall(msg)
        s.close()
        received = int(sink.stdout.readline())
        return received / (time.monotonic() - t0) / 1e6
    finally:
        stack.close()


def bench(duration: float, repeats: int, size: int, cpus: list[int] | None, burner: bool = False) -> dict:
    dispatcher_cpu, app_cpu, hammer_cpu = cpus if cpus else (None, None, None)
    if app_cpu is not None:
        os.sched_setaffinity(0, {app_cpu})
    env = _guest_env()
    tmp = tempfile.mkdtemp(prefix="isostack-hostile-")
    path = os.path.join(tmp, "isostackd.sock")
    sink = subprocess.Popen(_pinned([sys.executable, "-c", SINK], app_cpu), stdout=subprocess.PIPE, text=True)
    disp = subprocess.Popen(_pinned([sys.executable, "-m", "isostack.dispatcher", "--socket", path,
                                     "--allow-shared", "--no-placement", "--log-level", "WARNING"], dispatcher_cpu),
                            env=env)
    alone: list[float] = []
    hostile: list[float] = []
    burned: list[float] = []
    try:
        port = int(sink.stdout.readline())
        for _ in range(500):
            if os.path.exists(path):
                break
            time.sleep(0.02)
        for _ in range(repeats):
            alone.append(_stream(path, port, sink, size, duration))
            ham = subprocess.Popen(_pinned([sys.executable, "-m", "isoperf.hostilebench", "--hammer", path],
                                           hammer_cpu), env=env, stdout=subprocess.PIPE, text=True)
            try:
                if not ham.stdout.readline().startswith("cut-off"):
                    raise RuntimeError("the hostile application did not start")
                time.sleep(0.3)
                hostile.append(_stream(path, port, sink, size, duration))
                if ham.poll() is not None:
                    raise RuntimeError("the hostile application died")
            finally:
                ham.kill()
                ham.wait()
                ham.stdout.close()
            if burner:
                burn = subprocess.Popen(_pinned([sys.executable, "-c", BURNER], hammer_cpu))
                try:
                    time.sleep(0.3)
                    burned.append(_stream(path, port, sink, size, duration))
                finally:
                    burn.kill()
                    burn.wait()
    finally:
        disp.terminate()
        disp.wait()
        sink.kill()
        sink.wait()
        try:
            os.rmdir(tmp)
        except OSError:
            pass
    a, h = statistics.median(alone), statistics.median(hostile)
    res = {"size": size, "duration_s": duration, "repeats": repeats, "cpus": cpus,
           "alone_mb_s": [round(x, 1) for x in alone], "hostile_mb_s": [round(x, 1) for x in hostile],
           "alone_median_mb_s": round(a, 1), "hostile_median_mb_s": round(h, 1), "ratio": round(h / a, 3)}
    if burner:
        b = statistics.median(burned)
        res.update(burner_mb_s=[round(x, 1) for x in burned], burner_median_mb_s=round(b, 1),
                   burner_ratio=round(b / a, 3), ratio_to_burner=round(h / b, 3))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m isoperf.hostilebench",
                                description="a well-behaved application's throughput through isostackd, alone and "
                                            "while a hostile application hammers it (interleaved repeats, medians)")
    p.add_argument("--hammer", metavar="PATH", help="only run the hostile application against isostackd at PATH")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per run [2]")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of runs (alone, with the hostile one, with the burner if asked) [5]")
    p.add_argument("--size", type=int, default=16384, help="bytes per sendall [16384]")
    p.add_argument("--cpus", default=None, metavar="D,A,H",
                   help="pin the dispatcher, the good application (and the sink), the hostile one (and the burner) to "
                        "these CPUs")
    p.add_argument("--burner", action="store_true",
                   help="also run the good application beside a process that only burns CPU (the fair baseline)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.hammer:
        return hammer(args.hammer)
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    if cpus is not None and len(cpus) != 3:
        p.error("--cpus takes three CPUs: dispatcher, good application, hostile application")
    res = bench(args.duration, args.repeats, args.size, cpus, args.burner)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"alone        MB/s: {res['alone_mb_s']}  median {res['alone_median_mb_s']}")
    print(f"with hostile MB/s: {res['hostile_mb_s']}  median {res['hostile_median_mb_s']}")
    if args.burner:
        print(f"with burner  MB/s: {res['burner_mb_s']}  median {res['burner_median_mb_s']}")
    print(f"ratio (with hostile / alone, medians): {res['ratio']:.3f}  (goal >= 0.8)")
    if args.burner:
        print(f"ratio (with burner / alone): {res['burner_ratio']:.3f}; "
              f"(with hostile / with burner): {res['ratio_to_burner']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

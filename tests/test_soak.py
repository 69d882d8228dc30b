"""Soak (issue 12): mixed STREAM/RR/CRR through isostackd and vhea for a bounded time, and nothing grows.

The host-only path, as close to a guest's as a host gets without a VM: `vhea serve` with two tap ports, each
TAP device in a network namespace of this test; isostackd and the `--stack iso` isoperf clients in namespace
A, three isoperf servers (kernel sockets) in namespace B, so every byte goes application -> isostackd ->
kernel TCP -> TAP -> vhea's switch -> TAP -> kernel TCP -> server. The clients run in rounds of ROUND_S (8
STREAM + 40 RR + 16 CRR connections at once, 64 in all; each round attaches anew, CRR opens a connection
per transaction), so attach/detach and connection churn are part of the load.

What is checked (docs/reliability.md, "Soak"):
- RSS of vhea and isostackd between rounds: the last within RSS_TOLERANCE (5 %) of the one after the warm-up
  (the first fifth of the rounds, at least 2) in a soak of SOAK_ROUNDS or more; for vhea, of the highest RSS
  seen up to then, under load too (HIGH_WATER: its glibc heap keeps the free holes a load peak left, so its
  idle RSS steps up to an earlier peak at random rounds while what it uses stays flat, docs/reliability.md);
  the 60 s slice is too short for a warm-up and only catches a gross leak (SLICE_RSS_TOLERANCE); the table
  gives every reading and the trend after the warm-up;
- fds: isostackd's between rounds equal its idle count before the first round, vhea's do not change;
- counters end to end: every isoperf run clean (sender's bytes = receiver's bytes), isostackd's recv_bytes = the
  responses the RR/CRR clients counted, its send_bytes = what the clients sent plus their 8-byte hellos, every
  app detached, none failed, no tx ring stranded; vhea forwarded tap A -> B exactly what it took in (frames and
  bytes, both ways), dropped nothing, and carried at least the payload; a pair of vhost-user front-ends (ports
  g1, g2) exchanging bursts beside them got every frame intact.

ISOSTACK_SOAK_SECONDS sets the length (default 60, the slice of the normal suite; `tox -e soak`: 300; an hour
by hand); ISOSTACK_SOAK_REPORT names a file for the table. The VM variant (a TCG guest through the testbed's
native peer) is by hand: docs/reliability.md.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest
from test_vhea_tap_netns import WHY_NOT, ip
from vhea_helpers import MAC_A, MAC_B, VHEA_CMD, proc_fds, proc_rss_kib, serve_frontend, serve_stats, wait_for

from vhea.frontend import ethernet

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"the soak needs netns and tun: {WHY_NOT}")

SOAK_S = float(os.environ.get("ISOSTACK_SOAK_SECONDS", "60"))
ROUND_S = 15.0  # one round of clients: ~1 s start, 1 s warm-up, the measured rest
WARMUP_ROUNDS = 2  # at least; a fifth of the rounds in longer runs
# isoperf's 5 s covers three SYNs (0, 1, 3 s); a CRR connect of a 5-minute run took longer than that while
# STREAM filled the taps (the table shows SYN retransmits and the taps' drops); 30 s still fails a connect that
# isostackd never completes
CONNECT_TIMEOUT_S = 30
RSS_TOLERANCE = 0.05  # the soak proper (SOAK_ROUNDS or more)
SLICE_RSS_TOLERANCE = 0.15  # the short slice: too short for a warm-up; catches a gross leak only
SOAK_ROUNDS = 10  # rounds from which the 5 % holds (a fifth of them warm-up)
# daemons whose idle RSS is compared with the highest RSS of the warm-up, under load too: vhea's frames are
# malloc'd, and the brk heap keeps the holes a burst left (in use, measured with mallinfo2 in vhea: ~5.2 MiB
# idle from the first round to the last; the heap 6.4 -> 9.7 MiB, the rest free inside it)
HIGH_WATER = ("vhea",)
SAMPLE_S = 1.0
CLIENT = "10.79.0.1"
SERVER = "10.79.0.2"
HELLO = 8  # isoperf's per-connection hello (ISOP + u32 index)

# (test, connections, message size, control port of its server)
WORKLOAD = [("stream", 8, 1448, 5701), ("rr", 40, 256, 5702), ("crr", 16, 64, 5703)]


@dataclass
class Sample:
    t: float
    rss_kib: dict[str, int]
    fds: dict[str, int]


@dataclass
class Soak:
    """What the run saw: samples during it, the idle readings between rounds, the clients' results."""

    pids: dict[str, int]
    samples: list[Sample] = field(default_factory=list)
    idle: list[Sample] = field(default_factory=list)  # before round 1, then after every round
    results: list[dict] = field(default_factory=list)
    warmup: int = WARMUP_ROUNDS  # rounds before the readings that count

    def trend_kib_per_min(self, name: str) -> float:
        """Least-squares slope of the idle RSS readings after the warm-up, KiB per minute."""
        points = [(s.t, s.rss_kib[name]) for s in self.idle[self.warmup:]]
        if len(points) < 2:
            return 0.0
        mt = sum(t for t, _ in points) / len(points)
        mr = sum(r for _, r in points) / len(points)
        var = sum((t - mt) ** 2 for t, _ in points)
        return 60 * sum((t - mt) * (r - mr) for t, r in points) / var if var else 0.0

    def baseline_kib(self, name: str) -> int:
        """The RSS the last idle reading is compared with: the idle one after the warm-up, or (HIGH_WATER) the
        highest reading up to it, the samples under load included."""
        warm = self.idle[self.warmup]
        if name not in HIGH_WATER:
            return warm.rss_kib[name]
        return max([s.rss_kib[name] for s in self.samples if s.t <= warm.t] + [warm.rss_kib[name]])

    def read(self) -> Sample:
        return Sample(time.monotonic(), {n: proc_rss_kib(p) for n, p in self.pids.items()},
                      {n: proc_fds(p) for n, p in self.pids.items()})


def _sampler(soak: Soak, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.wait(SAMPLE_S):
            try:
                soak.samples.append(soak.read())
            except (OSError, AssertionError):  # a daemon died: the test's checks say so
                return
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Pump:
    """Two vhost-user front-ends (ports g1, g2) in a thread of the test process, sending each other bursts of
    frames of every size until stopped: vhea's vring path (memory table, kicks, calls, rx buffers) under the
    same soak as its tap path. Counts what each sent and what arrived intact."""

    BURST = 32
    ETHERTYPE = 0x88B5

    def __init__(self, sockdir: str):
        self.ends = {"g1": serve_frontend(sockdir, "g1"), "g2": serve_frontend(sockdir, "g2")}
        self.macs = {"g1": MAC_A, "g2": MAC_B}
        self.sent = {"g1": [0, 0], "g2": [0, 0]}  # frames, bytes
        self.received = {"g1": 0, "g2": 0}  # the other's frames, intact and in order
        self.lost: list[str] = []
        self.stop = threading.Event()
        for fe in self.ends.values():
            fe.handshake()
            fe.post_rx()
        self.burst("g2", "g1", 0)  # MAC_B learned (this one floods: to the taps too), then only unicast
        self.burst("g1", "g2", 0)
        self.sent = {"g1": [0, 0], "g2": [0, 0]}  # from here on
        self.received = {"g1": 0, "g2": 0}
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def burst(self, src: str, dst: str, n: int) -> None:
        frames = [ethernet(self.macs[dst], self.macs[src], n.to_bytes(4, "big") + bytes([k]) * (42 + 45 * k))
                  for k in range(self.BURST)]
        sender, receiver = self.ends[src], self.ends[dst]
        for f in frames:
            sender.send_frame(f)
            self.sent[src][0] += 1
            self.sent[src][1] += len(f)
        got: list[bytes] = []

        def arrived() -> bool:
            got.extend(f for f in receiver.receive() if f[6:12] == frames[0][6:12])  # not the taps' broadcasts
            receiver.post_rx()
            return len(got) >= len(frames)
        if not wait_for(arrived, timeout=10, step=0.001) or got != frames:
            self.lost.append(f"burst {n} {src} -> {dst}: {len(got)} of {len(frames)} frames, intact: {got == frames}")
        self.received[dst] += sum(a == b for a, b in zip(got, frames, strict=False))
        sender.reclaim(sender.tx_ring())

    def run(self) -> None:
        n = 1
        while not self.stop.wait(0.01) and not self.lost:
            self.burst("g1", "g2", n)
            self.burst("g2", "g1", n)
            n += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        for fe in self.ends.values():
            fe.close()


def _in_ns(ns: str, argv: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _isostackd_stats(proc: subprocess.Popen, log_path: str) -> dict:
    """The counters of the running isostackd: SIGUSR1 makes it log them (a hung loop never does)."""
    before = open(log_path).read().count(" stats: ")
    proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: open(log_path).read().count(" stats: ") > before, timeout=10), "isostackd did not answer"
    line = [x for x in open(log_path).read().splitlines() if " stats: " in x][-1]
    return ast.literal_eval(line.split(" stats: ", 1)[1])


TCP_COUNTERS = ("TcpActiveOpens", "TcpAttemptFails", "TcpRetransSegs", "TcpExtTCPSynRetrans", "TcpExtTCPTimeouts",
                "TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtPAWSEstab", "TcpExtTW", "TcpExtTWRecycled",
                "TcpExtTCPAbortOnTimeout")


def tcp_counters(ns: str, ifname: str) -> dict[str, int]:
    """The namespace's TCP counters that say why connections were slow or failed (nstat, absolute), and the
    drops of its TAP device (the kernel's side of it: a full queue towards vhea is a tx drop)."""
    p = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-asz", "--json"], capture_output=True, text=True)
    kernel = json.loads(p.stdout).get("kernel", {}) if p.returncode == 0 else {}
    out = {k: kernel[k] for k in TCP_COUNTERS if k in kernel}
    p = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", ifname], capture_output=True, text=True)
    if p.returncode == 0:
        stats = json.loads(p.stdout)[0].get("stats64", {})
        out["tap_tx_dropped"] = stats.get("tx", {}).get("dropped", -1)
        out["tap_rx_dropped"] = stats.get("rx", {}).get("dropped", -1)
    return out


def _round(ns: str, env: dict, seconds: float, logdir: str, n: int, diagnose=lambda: "") -> list[dict]:
    """One round: the three clients at once in namespace A; their JSON results (`diagnose()`: what to add to
    the message of a failed client)."""
    clients = []
    for test, connections, size, port in WORKLOAD:
        out = open(os.path.join(logdir, f"client-{n}-{test}.json"), "w+")
        clients.append((test, out, subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "isoperf", "client", "--host", SERVER,
             "--port", str(port), "--test", test, "--stack", "iso", "--connections", str(connections),
             "--size", str(size), "--duration", str(seconds), "--warmup", "1", "--json",
             "--connect-timeout", str(CONNECT_TIMEOUT_S)],
            env=env, stdout=out, stderr=subprocess.PIPE, text=True)))
    results = []
    for test, out, proc in clients:
        _, err = proc.communicate(timeout=seconds + 120)
        out.seek(0)
        text = out.read()
        out.close()
        if proc.returncode != 0:
            errors = json.loads(text)["errors"] if text.startswith("{") else text[-2000:]
            raise AssertionError(f"round {n} {test}: exit {proc.returncode}: {err[-2000:]} {errors}\n{diagnose()}")
        results.append(json.loads(text))
    return results


@pytest.fixture
def topology(tmp_path, guest_env):
    """vhea with tap ports a and b, each TAP in its own namespace; isostackd in A, the servers in B."""
    tag = uuid.uuid4().hex[:6]
    namespaces = {"a": f"soak-a-{tag}", "b": f"soak-b-{tag}"}
    taps = {"a": f"vhsa{tag}", "b": f"vhsb{tag}"}
    sockdir = str(tmp_path / "vhea")
    os.mkdir(sockdir)
    procs: list[subprocess.Popen] = []
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("vhea", "isostackd", "servers")}
    try:
        for ns in namespaces.values():
            ip("netns", "add", ns)
        vhea = subprocess.Popen([*VHEA_CMD, "serve", "--socket-dir", sockdir, "--ports", "g1,g2",
                                 "--tap-port", f"a={taps['a']}", "--tap-port", f"b={taps['b']}",
                                 "--log-level", "warning"], stdout=logs["vhea"], stderr=subprocess.STDOUT)
        procs.append(vhea)
        assert wait_for(lambda: os.path.exists(os.path.join(sockdir, "control.sock")), timeout=15), \
            open(tmp_path / "vhea.log").read()
        for side, address in (("a", CLIENT), ("b", SERVER)):
            ip("link", "set", taps[side], "netns", namespaces[side])
            ip("-n", namespaces[side], "addr", "add", f"{address}/24", "dev", taps[side])
            ip("-n", namespaces[side], "link", "set", taps[side], "up")
            ip("-n", namespaces[side], "link", "set", "lo", "up")
        attach = str(tmp_path / "isostackd.sock")
        env = dict(guest_env, ISOSTACK_SOCKET=attach)
        isostackd = _in_ns(namespaces["a"], [sys.executable, "-m", "isostack.dispatcher", "--socket", attach,
                                     "--allow-shared", "--no-placement", "--busy-poll-us", "200",
                                     "--sleep-ms", "20"], env, logs["isostackd"])
        procs.append(isostackd)
        assert wait_for(lambda: os.path.exists(attach), timeout=15), open(tmp_path / "isostackd.log").read()
        for _, _, _, port in WORKLOAD:
            procs.append(_in_ns(namespaces["b"], [sys.executable, "-m", "isoperf", "server", "--bind", SERVER,
                                          "--port", str(port)], env, logs["servers"]))
        time.sleep(1)  # the servers bind
        yield {"vhea": vhea, "isostackd": isostackd, "env": env, "sockdir": sockdir, "dir": str(tmp_path),
               "ns": namespaces["a"], "ns_b": namespaces["b"], "taps": taps}
        for name, proc in (("vhea", vhea), ("isostackd", isostackd)):
            assert proc.poll() is None, f"{name} died ({proc.returncode}): {open(tmp_path / f'{name}.log').read()}"
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs.values():
            log.close()
        for ns in namespaces.values():
            ip("netns", "del", ns, check=False)
        for tap in taps.values():
            ip("link", "del", tap, check=False)


def _delta(now: dict, then: dict) -> dict:
    """vhea's per-port counters (frames, bytes, drops by reason) since `then`."""
    ports = {}
    for name, port in now["ports"].items():
        before = then["ports"][name]
        ports[name] = {key: port[key] - before[key] for key in
                       ("from_guest_frames", "from_guest_bytes", "to_guest_frames", "to_guest_bytes")}
        ports[name]["warnings_suppressed"] = port["warnings_suppressed"] - before["warnings_suppressed"]
        ports[name]["drops"] = {why: n - before["drops"].get(why, 0) for why, n in port["drops"].items()
                                if n != before["drops"].get(why, 0)}
    return {"ports": ports}


def _table(soak: Soak, stats: dict, vstats: dict, sent: int, responses: int, seconds: float, pump: Pump) -> str:
    warm, last = soak.idle[soak.warmup], soak.idle[-1]
    rows = [f"soak: {seconds:.0f} s, {len(soak.idle) - 1} rounds of {ROUND_S:.0f} s, "
            f"{sum(c for _, c, _, _ in WORKLOAD)} connections at once",
            f"| daemon | RSS KiB idle before | after warm-up ({soak.warmup} rounds) | baseline | at the end | change "
            "| trend | peak under load | fds idle before | after warm-up | at the end | peak under load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in soak.pids:
        baseline = soak.baseline_kib(name)
        change = (last.rss_kib[name] - baseline) / baseline * 100
        peak_rss = max((s.rss_kib[name] for s in soak.samples), default=0)
        peak_fds = max((s.fds[name] for s in soak.samples), default=0)
        rows.append(f"| {name} | {soak.idle[0].rss_kib[name]} | {warm.rss_kib[name]} | {baseline} "
                    f"| {last.rss_kib[name]} "
                    f"| {change:+.1f} % | {soak.trend_kib_per_min(name):+.0f} KiB/min | {peak_rss} "
                    f"| {soak.idle[0].fds[name]} | {warm.fds[name]} "
                    f"| {last.fds[name]} | {peak_fds} |")
    rows.append("")
    for name in soak.pids:
        rows.append(f"{name} RSS KiB idle, before the first round and after each: "
                    + " ".join(str(i.rss_kib[name]) for i in soak.idle))
    a, b = vstats["ports"]["a"], vstats["ports"]["b"]
    by_test: dict[str, list[int]] = {}
    for r in soak.results:
        entry = by_test.setdefault(r["test"], [0, 0])
        entry[0] += r["client_total_bytes"]
        entry[1] += r.get("transactions", 0) or 0
    rows += ["", "| counter | value |", "|---|---|"]
    for test, (total, transactions) in by_test.items():
        rows.append(f"| isoperf {test}: bytes (client = server) / measured transactions | {total} / {transactions} |")
    rows += [f"| isostackd send_bytes (= client payload {sent} + hellos) | {stats['send_bytes']} |",
             f"| isostackd recv_bytes (= RR/CRR responses {responses}) | {stats['recv_bytes']} |",
             f"| isostackd apps attached / detached / failed | {stats['apps_attached']} / {stats['apps_detached']}"
             f" / {stats['apps_failed']} |",
             f"| isostackd kernel sockets / tx_stranded / bad_entries | {stats['so_busy_poll_set']} / "
             f"{stats['tx_stranded']} / {stats['bad_entries']} |",
             f"| isostackd passes cut by the time budget (time_deferred; not a fault: a preempted loop) | "
             f"{stats.get('time_deferred', 0)} |",
             f"| vhea tap a -> b frames / bytes | {a['from_guest_frames']} / {a['from_guest_bytes']} |",
             f"| vhea tap b -> a frames / bytes | {b['from_guest_frames']} / {b['from_guest_bytes']} |",
             f"| vhea vhost-user g1 -> g2 / g2 -> g1 frames (sent = arrived intact) | {pump.sent['g1'][0]} = "
             f"{pump.received['g2']} / {pump.sent['g2'][0]} = {pump.received['g1']} |",
             "| vhea drops (a, b, g1, g2) | " + ", ".join(str(vstats['ports'][p]['drops'] or 0)
                                                        for p in ('a', 'b', 'g1', 'g2')) + " |"]
    return "\n".join(rows)


def test_soak_mixed_load_through_isostackd_and_vhea(topology):
    pids = {"vhea": topology["vhea"].pid, "isostackd": topology["isostackd"].pid}
    rounds = max(WARMUP_ROUNDS + 2, round(SOAK_S / ROUND_S))
    soak = Soak(pids, warmup=max(WARMUP_ROUNDS, rounds // 5))
    measured = ROUND_S - 3  # per round: start-up and the 1 s warm-up besides
    pump = Pump(topology["sockdir"])
    base = serve_stats(topology["sockdir"])  # after start-up (the taps' first frames found g1, g2 not there)
    pump.start()
    soak.idle.append(soak.read())
    stop = threading.Event()
    sampler = _sampler(soak, stop)
    start = time.monotonic()
    idle_fds = soak.idle[0].fds["isostackd"]
    log_path = os.path.join(topology["dir"], "isostackd.log")

    def diagnose() -> str:
        lines = [x for x in open(log_path).read().splitlines() if "attached" not in x and "detached" not in x]
        return (f"isostackd: {_isostackd_stats(topology['isostackd'], log_path)}\nits log: {lines[-10:]}\n"
                f"TCP A: {tcp_counters(topology['ns'], topology['taps']['a'])}\n"
                f"TCP B: {tcp_counters(topology['ns_b'], topology['taps']['b'])}\n"
                f"vhea: {_delta(serve_stats(topology['sockdir']), base)}")
    try:
        for n in range(rounds):
            soak.results += _round(topology["ns"], topology["env"], measured, topology["dir"], n, diagnose)
            assert wait_for(lambda: proc_fds(pids["isostackd"]) == idle_fds, timeout=10), \
                f"round {n}: isostackd holds {proc_fds(pids['isostackd'])} fds, {idle_fds} idle before"
            soak.idle.append(soak.read())
    finally:
        stop.set()
        sampler.join(5)
        pump.close()
    seconds = time.monotonic() - start
    stats = _isostackd_stats(topology["isostackd"], os.path.join(topology["dir"], "isostackd.log"))
    vstats = _delta(serve_stats(topology["sockdir"]), base)

    streams = [r for r in soak.results if r["test"] == "stream"]
    exchanges = [r for r in soak.results if r["test"] != "stream"]
    sent = sum(r["client_total_bytes"] for r in streams) + sum(r["client_total_bytes"] // 2 for r in exchanges)
    responses = sum(r["client_total_bytes"] // 2 for r in exchanges)
    tcp = {"A": tcp_counters(topology["ns"], topology["taps"]["a"]),
           "B": tcp_counters(topology["ns_b"], topology["taps"]["b"])}
    report = _table(soak, stats, vstats, sent, responses, seconds, pump) + "\n" + "\n".join(
        f"| TCP in namespace {side} | " + ", ".join(f"{k.removeprefix('TcpExt')} {v}" for k, v in c.items()) + " |"
        for side, c in tcp.items())
    print("\n" + report)
    if os.environ.get("ISOSTACK_SOAK_REPORT"):
        with open(os.environ["ISOSTACK_SOAK_REPORT"], "w") as f:
            f.write(report + "\n")

    # every client run clean, the sender's count the receiver's
    for r in soak.results:
        assert r["errors"] == [] and r["client_total_bytes"] == r["server_total_bytes"] > 0, r
    # isostackd: the bytes the applications moved, every app gone, nothing failed or stuck
    assert stats["recv_bytes"] == responses
    hellos = stats["send_bytes"] - sent
    assert hellos % HELLO == 0 and HELLO * 48 * rounds <= hellos <= HELLO * stats["so_busy_poll_set"], hellos
    assert stats["apps_attached"] == stats["apps_detached"] == 3 * rounds
    assert stats["apps_failed"] == stats["tx_stranded"] == stats["bad_entries"] == 0
    assert stats["attach_refused"] == stats["budget_deferred"] == stats["eventfd_full"] == 0
    assert stats["warnings_suppressed"] == 0
    # vhea, over the soak: what one tap gave it went out of the other, the vhost-user pair's frames all arrived
    # intact, nothing dropped
    ports = vstats["ports"]
    a, b = ports["a"], ports["b"]
    assert [a["from_guest_frames"], a["from_guest_bytes"]] == [b["to_guest_frames"], b["to_guest_bytes"]]
    assert [b["from_guest_frames"], b["from_guest_bytes"]] == [a["to_guest_frames"], a["to_guest_bytes"]]
    assert pump.lost == []
    for src, dst in (("g1", "g2"), ("g2", "g1")):
        assert [ports[src]["from_guest_frames"], ports[src]["from_guest_bytes"]] == pump.sent[src]
        assert pump.received[dst] == pump.sent[src][0] > 0
    assert all(not ports[p]["drops"] for p in ports), {p: ports[p]["drops"] for p in ports}
    assert all(not ports[p]["warnings_suppressed"] for p in ports)
    assert a["from_guest_bytes"] > stats["send_bytes"] and b["from_guest_bytes"] > stats["recv_bytes"]
    # flat: fds exactly, RSS within RSS_TOLERANCE of the reading after the warm-up (HIGH_WATER: of the highest)
    warm = soak.idle[soak.warmup]
    for reading in soak.idle[1:]:
        assert reading.fds == warm.fds, f"fds {reading.fds}, {warm.fds} after the warm-up"
    assert soak.idle[0].fds["vhea"] == warm.fds["vhea"]
    tolerance = RSS_TOLERANCE if rounds >= SOAK_ROUNDS else SLICE_RSS_TOLERANCE
    for name in pids:
        growth = (soak.idle[-1].rss_kib[name] - soak.baseline_kib(name)) / soak.baseline_kib(name)
        assert growth <= tolerance, f"{name} RSS grew {growth:.1%}: {[s.rss_kib[name] for s in soak.idle]}"

"""`vhea bench`: frames/s and Gb/s through the device model, port a -> port b, against DPDK's vhost PMD.

One run measures, each for `seconds` after a short warm-up:
- anchor: DPDK testpmd virtio-user (txonly) -> DPDK's own vhost PMD in testpmd (rxonly), no vhea;
- vhea + DPDK: testpmd virtio-user txonly on port a, testpmd virtio-user rxonly on port b;
- vhea + Python: the built-in front-end (vhea.frontend) as sender on a and receiver on b, each in its own
  process; with 64 KiB TSO frames too (whole to a TSO peer, and segmented for a peer without offloads).
The vhea cases run once per datapath (`vhea serve --datapath native`, then `python`), so both stand side by
side with the anchor of the same run. Frame sizes are testpmd's `txpkts` (the Ethernet frame without FCS).
Rates are counted at the receiver. 64 KiB TSO frames come from the Python front-end only: testpmd's txonly
engine builds plain UDP frames (its TSO, `tso set`, belongs to the csum engine, which forwards what it receives).

"per vhea core" = frames/s divided by the CPU share vhea used in the window (user + system): what one fully
busy vhea core would forward if the rate scaled (the front-ends, not vhea, limit several rows here). The
anchor's vhost PMD busy-polls one core, so "per core vs anchor" compares per-core rates.
"taken from a per vhea core": the frames/s vhea took from port a's tx ring (vhea stats; delivered to b or
dropped there for want of buffers) per vhea core. The anchor's vhost PMD counts what it takes from the
virtio-user tx ring, so this is its like; with DPDK on both ports here, b's testpmd (three busy processes on
two cores) reposts buffers too slowly and most frames taken from a are counted rx_no_buffers drops at b.
"vhea datapath alone (in-process)" (microbench.py) runs the same service code on pre-filled rings in one
process: no front-end, no syscalls, one core by construction; its frames/s is the datapath's ceiling.

testpmd processes get `-l 0,1` with different --main-lcore and --file-prefix, --no-huge -m 1024 --no-pci,
and run under `timeout` so none can outlive the bench; only processes started here are ever stopped.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from . import testpmd
from .frontend import BUF_SIZE, Frontend
from .net import NET_HDR_LEN
from .offload import (
    VHDR,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
)
from .vring import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

WARMUP_S = 1.0
TSO_PAYLOAD = 65535 - 20 - 32  # a 64 KiB IP datagram: IPv4 20 + TCP 32 (timestamps) + payload
TSO_MSS = 1448


@dataclass
class Row:
    case: str  # anchor | vhea+dpdk | vhea+python
    frame: str  # "64", "1518", "64K TSO", ...
    frame_bytes: int  # bytes per received frame (for Gb/s)
    fps: float
    gbps: float
    ratio: float | None = None  # to the anchor at the same frame size
    note: str = ""
    vhea_cpu: float | None = None  # cores the vhea process used in the window (user + system time / wall time)
    fps_per_core: float | None = None  # fps / vhea_cpu: what one fully busy vhea core would forward
    datapath: str | None = None  # vhea's datapath (native | python); None for the anchor
    vhea_frames: int | None = None  # frames vhea counted into port b in the measuring window (vhea stats)
    taken_fps: float | None = None  # frames/s vhea took from port a's tx ring in the window (delivered or dropped)
    taken_per_core: float | None = None  # taken_fps / vhea_cpu (the anchor's vhost PMD also counts what it takes)
    verified: int | None = None  # frames the Python receiver compared byte for byte with what was sent (sampled)
    bad: int | None = None  # of those, frames that differed
    core_ratio: float | None = None  # fps_per_core / anchor fps (the vhost PMD uses one busy-polling core)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row(case: str, frame: str, nbytes: int, fps: float, cpu: float | None, anchor: float | None,
         note: str = "", datapath: str | None = None) -> Row:
    per_core = fps / cpu if cpu else None
    return Row(case, frame, nbytes, fps, fps * nbytes * 8 / 1e9, fps / anchor if anchor else None, note, cpu,
               per_core, datapath=datapath, core_ratio=per_core / anchor if per_core and anchor else None)


# ---- DPDK ----------------------------------------------------------------------------------------------------

def _testpmd_cmd(vdev: str, prefix: str, main_lcore: int, timeout_s: int) -> list[str]:
    # stdbuf: testpmd writes its statistics with printf; line-buffered, they reach the log when asked for
    return ["timeout", "--kill-after=5", str(timeout_s), "stdbuf", "-oL", "dpdk-testpmd", "-l", "0,1", "--main-lcore",
            str(main_lcore),
            "--no-huge", "-m", "1024", "--no-pci", "--file-prefix", prefix, "--vdev", vdev, "--", "-i",
            "--nb-cores=1", "--rxq=1", "--txq=1"]


_BLOCK = re.compile(r"#+ NIC statistics for port 0\s+#+(.*?)#{10,}", re.S)


def _rx_after(tp: testpmd.Testpmd, before: int, timeout: float = 10.0) -> int:
    """RX-packets of port 0 from the first stats block after the first `before` blocks of the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blocks = _BLOCK.findall(tp.output())
        if len(blocks) > before:
            m = re.search(r"RX-packets:\s+(\d+)", blocks[before])
            return int(m.group(1)) if m else 0
        time.sleep(0.05)
    raise RuntimeError(f"testpmd gave no port statistics (log {tp.log_path})")


def _rx_count(rx: testpmd.Testpmd, seconds: float, pid: int | None = None) -> tuple[int, float, float | None]:
    """Frames the receiver counted in `seconds`, the time taken, and the cores `pid` used meanwhile."""
    before = len(_BLOCK.findall(rx.output()))
    rx.send("clear port stats all")
    t0 = time.monotonic()
    c0 = proc_cpu_s(pid) if pid else 0.0
    time.sleep(seconds)
    rx.send("show port stats all")
    t1 = time.monotonic()
    cpu = (proc_cpu_s(pid) - c0) / (t1 - t0) if pid else None
    return _rx_after(rx, before), t1 - t0, cpu


def _measure_testpmd(tx: testpmd.Testpmd, rx: testpmd.Testpmd, size: int, seconds: float,
                     pid: int | None = None, probe=None) -> tuple[float, float | None, int | None]:
    """Switch the sender to `size`, wait for traffic, count what the receiver gets in `seconds`: frames/s, the
    sender's CPU share, and how much `probe()` (vhea's count of frames into port b) grew meanwhile."""
    tx.send("stop", f"set txpkts {size}", "start")
    deadline = time.monotonic() + 15
    while _rx_count(rx, WARMUP_S / 2)[0] == 0:  # links come up a little after start
        if time.monotonic() > deadline:
            return 0.0, None, None
    time.sleep(WARMUP_S / 2)
    for _attempt in range(2):
        p0 = probe() if probe else None
        n, dt, cpu = _rx_count(rx, seconds, pid)
        probed = tuple(b - a for a, b in zip(p0, probe(), strict=True)) + (dt,) if probe else None
        # The receiver's count is read from testpmd's interactive output: a window in which it read 0 while vhea
        # delivered frames into port b (seen 1 run in ~8 under load) is a lost reading, not a figure: once more.
        if n or not probed or not probed[0]:
            break
    return n / dt, cpu, probed


def _wait(cond, what: str, timeout: float = 30.0, procs: tuple = ()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{what}: testpmd exited early, see {p.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out")
        time.sleep(0.1)


def _stop_testpmd(tp: testpmd.Testpmd) -> None:
    """Quit a testpmd this bench started, and remove its EAL runtime directory (named by our --file-prefix)."""
    try:
        tp.send("stop")
    except (BrokenPipeError, OSError):
        pass
    tp.quit(10)
    prefix = getattr(tp, "prefix", None)
    if prefix:
        shutil.rmtree(os.path.join("/var/run/dpdk", prefix), ignore_errors=True)


def _start_testpmd(vdev: str, prefix: str, main_lcore: int, timeout_s: int, log: str) -> testpmd.Testpmd:
    tp = testpmd.Testpmd(_testpmd_cmd(vdev, prefix, main_lcore, timeout_s), log)
    tp.prefix = prefix
    return tp


def bench_anchor(workdir: str, sizes: list[int], seconds: float) -> dict[int, tuple[float, float | None]]:
    """testpmd virtio-user txonly -> testpmd vhost PMD rxonly."""
    sock = os.path.join(workdir, "anchor.sock")
    budget = int(10 + len(sizes) * (seconds + WARMUP_S + 3) + 30)
    tag = f"{os.getpid()}"
    rx = _start_testpmd(f"net_vhost0,iface={sock},queues=1", f"vhbA{tag}", 1, budget,
                        os.path.join(workdir, "anchor-vhost.log"))
    tx = None
    try:
        rx.send("set fwd rxonly", "start")
        _wait(lambda: os.path.exists(sock), "vhost PMD socket", procs=(rx,))
        tx = _start_testpmd(f"net_virtio_user0,path={sock},queues=1", f"vhbV{tag}", 0, budget,
                            os.path.join(workdir, "anchor-virtio.log"))
        tx.send("set fwd txonly")
        return {s: _measure_testpmd(tx, rx, s, seconds)[:2] for s in sizes}
    finally:
        for tp in (tx, rx):
            if tp is not None:
                _stop_testpmd(tp)


def _vhea_stats(sockdir: str) -> dict:
    from .ctl import query

    return query(sockdir, {"cmd": "stats"})


def _to_b(sockdir: str) -> tuple[int, int]:
    """(frames vhea put into port b, frames it took from port a), from vhea stats."""
    ports = _vhea_stats(sockdir)["ports"]
    return ports["b"]["to_guest_frames"], ports["a"]["from_guest_frames"]


def bench_vhea_dpdk(sockdir: str, workdir: str, sizes: list[int], seconds: float,
                    pid: int | None = None) -> dict[int, tuple[float, float | None, int | None]]:
    budget = int(10 + len(sizes) * (seconds + WARMUP_S + 3) + 30)
    tag = f"{os.getpid()}"
    rx = _start_testpmd(f"net_virtio_user0,path={sockdir}/b.sock,queues=1", f"vhbB{tag}", 1, budget,
                        os.path.join(workdir, "vhea-b.log"))
    tx = None
    try:
        rx.send("set fwd rxonly", "start")
        _wait(lambda: _vhea_stats(sockdir)["ports"]["b"]["connected"], "testpmd on port b", procs=(rx,))
        tx = _start_testpmd(f"net_virtio_user0,path={sockdir}/a.sock,queues=1", f"vhbT{tag}", 0, budget,
                            os.path.join(workdir, "vhea-a.log"))
        tx.send("set fwd txonly")
        _wait(lambda: _vhea_stats(sockdir)["ports"]["a"]["connected"], "testpmd on port a", procs=(tx,))
        time.sleep(1.0)  # queues set up
        return {s: _measure_testpmd(tx, rx, s, seconds, pid, lambda: _to_b(sockdir)) for s in sizes}
    finally:
        for tp in (tx, rx):
            if tp is not None:
                _stop_testpmd(tp)


# ---- Python front-end ----------------------------------------------------------------------------------------

def tso_test_frame(payload_len: int = TSO_PAYLOAD) -> bytes:
    """An IPv4/TCP frame as a guest hands it over with TSO (checksum field = pseudo-header sum)."""
    from .offload import csum_finish, csum_sum

    src, dst = bytes([10, 10, 0, 1]), bytes([10, 10, 0, 2])
    tcp_len = 32 + payload_len
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x18, 65535, 0, 0)
                   + b"\x01\x01\x08\x0a" + bytes(8))
    struct.pack_into("!H", th, 16, csum_sum(src + dst + struct.pack("!xBH", 6, tcp_len)) or 0xFFFF)
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 1, 0x4000, 64, 6, 0) + src + dst)
    struct.pack_into("!H", ip, 10, csum_finish(csum_sum(bytes(ip))))
    eth = bytes.fromhex("02000000000b02000000000a0800")
    return eth + bytes(ip) + bytes(th) + bytes(i & 0xFF for i in range(payload_len))


def _plain_frame(size: int) -> bytes:
    return bytes.fromhex("02000000000b02000000000a88b5") + bytes(size - 14)


def _py_sender(path: str, kind: str, size: int, stop, ready) -> None:
    """Keep port a's tx ring full of one frame: reclaim used heads, republish them, one kick per batch."""
    fe = Frontend(path, ring_size=1024)
    try:
        fe.handshake()
        r = fe.tx_ring()
        if kind == "tso":
            frame = tso_test_frame()
            vhdr = VHDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, TSO_MSS, 34, 16) + b"\0\0"
        else:
            frame, vhdr = _plain_frame(size), bytes(NET_HDR_LEN)
        data = vhdr + frame
        per = -(-len(data) // BUF_SIZE)
        heads = []
        for first in range(0, r.num - per + 1, per):
            for k in range(per):
                d = first + k
                piece = data[k * BUF_SIZE:(k + 1) * BUF_SIZE]
                fe.mem[r.bufs + d * BUF_SIZE:r.bufs + d * BUF_SIZE + len(piece)] = piece
                last = k == per - 1
                fe.write_desc(r, d, fe.gpa(r.bufs + d * BUF_SIZE), len(piece), 0 if last else VRING_DESC_F_NEXT,
                              0 if last else d + 1)
            heads.append(first)
        mem16 = fe.mem16
        used32 = memoryview(fe.mem)[r.used:r.used + 4 + 8 * r.num].cast("I")
        avail_ring = (r.avail + 4) // 2
        avail_idx_at = (r.avail + 2) // 2
        used_idx_at = (r.used + 2) // 2
        num = r.num
        free = heads
        avail_idx = 0
        last_used = 0
        ready.set()
        while not stop.is_set():
            used = mem16[used_idx_at]
            while last_used != used:
                free.append(used32[1 + 2 * (last_used % num)])
                last_used = (last_used + 1) & 0xFFFF
            if not free:
                time.sleep(0)
                continue
            for h in free:
                mem16[avail_ring + avail_idx % num] = h
                avail_idx = (avail_idx + 1) & 0xFFFF
            free = []
            mem16[avail_idx_at] = avail_idx
            os.eventfd_write(r.kick, 1)
    finally:
        fe.close()


#: the receiver compares one frame in this many with what the sender sent (more would slow it down)
VERIFY_EVERY = 1024


def _py_receiver(path: str, want: int | None, count, ready, stop, expect: bytes = b"", checks=None) -> None:
    """Post all rx buffers of port b, count frames (num_buffers of each first buffer), repost. Every
    VERIFY_EVERY-th frame's first buffer must start with `expect` (after the 12-byte header): checks[0] counts
    the frames compared, checks[1] those that differed."""
    fe = Frontend(path, ring_size=1024)
    try:
        fe.handshake(want_features=want)
        r = fe.rx_ring()
        mem = fe.mem
        mem16 = fe.mem16
        for d in range(r.num):
            fe.write_desc(r, d, fe.gpa(r.bufs + d * BUF_SIZE), BUF_SIZE, VRING_DESC_F_WRITE)
            mem16[(r.avail + 4) // 2 + d] = d
        avail_idx = r.num & 0xFFFF
        mem16[(r.avail + 2) // 2] = avail_idx
        fe.kick(r)
        used32 = memoryview(mem)[r.used:r.used + 4 + 8 * r.num].cast("I")
        avail_ring = (r.avail + 4) // 2
        avail_idx_at = (r.avail + 2) // 2
        used_idx_at = (r.used + 2) // 2
        num = r.num
        bufs = r.bufs
        last_used = 0
        frames = 0
        pending_bufs = 0  # buffers still to come of the current MRG_RXBUF frame
        ready.set()
        while not stop.is_set():
            used = mem16[used_idx_at]
            if used == last_used:
                count.value = frames
                time.sleep(0)
                continue
            while last_used != used:
                head = used32[1 + 2 * (last_used % num)]
                if pending_bufs == 0:
                    nb = mem[bufs + head * BUF_SIZE + 10] | mem[bufs + head * BUF_SIZE + 11] << 8
                    pending_bufs = max(nb, 1)
                    if expect and frames % VERIFY_EVERY == 0 and checks is not None:
                        at = bufs + head * BUF_SIZE + NET_HDR_LEN
                        checks[0] += 1
                        checks[1] += mem[at:at + len(expect)] != expect
                    frames += 1
                pending_bufs -= 1
                mem16[avail_ring + avail_idx % num] = head
                avail_idx = (avail_idx + 1) & 0xFFFF
                last_used = (last_used + 1) & 0xFFFF
            mem16[avail_idx_at] = avail_idx
            count.value = frames
            os.eventfd_write(r.kick, 1)
    finally:
        fe.close()


def _expected(kind: str, size: int, segmenting_peer: bool) -> bytes:
    """What the first receive buffer of each frame must start with (after the virtio header)."""
    if kind != "tso":
        return _plain_frame(size)
    frame = tso_test_frame()
    if segmenting_peer:
        return frame[:14]  # segments: same Ethernet header; their IP/TCP headers are rewritten (offload tests)
    return frame[:BUF_SIZE - NET_HDR_LEN]


def bench_python(sockdir: str, kind: str, size: int, seconds: float, segmenting_peer: bool = False,
                 pid: int | None = None) -> tuple[float, float | None, int, int, int]:
    """(frames/s, vhea CPU share, frames vhea put into port b, frames verified, frames that differed)."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    rx_ready, tx_ready = ctx.Event(), ctx.Event()
    count = ctx.Value("q", 0, lock=False)
    checks = ctx.Array("q", 2, lock=False)
    no_guest = ((1 << 64) - 1) & ~sum(1 << b for b in (VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
                                                        VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN))
    rx = ctx.Process(target=_py_receiver, args=(f"{sockdir}/b.sock", no_guest if segmenting_peer else None, count,
                                                rx_ready, stop, _expected(kind, size, segmenting_peer), checks),
                     daemon=True)
    tx = ctx.Process(target=_py_sender, args=(f"{sockdir}/a.sock", kind, size, stop, tx_ready), daemon=True)
    rx.start()
    try:
        if not rx_ready.wait(15):
            raise RuntimeError("python receiver did not start")
        tx.start()
        if not tx_ready.wait(15):
            raise RuntimeError("python sender did not start")
        time.sleep(WARMUP_S)
        b0, a0 = _to_b(sockdir)
        n0, t0 = count.value, time.monotonic()
        c0 = proc_cpu_s(pid) if pid else 0.0
        time.sleep(seconds)
        n1, t1 = count.value, time.monotonic()
        cpu = (proc_cpu_s(pid) - c0) / (t1 - t0) if pid else None
        b1, a1 = _to_b(sockdir)
        return (n1 - n0) / (t1 - t0), cpu, (b1 - b0, (a1 - a0) / (t1 - t0)), checks[0], checks[1]
    finally:
        stop.set()
        for p in (tx, rx):
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        _wait(lambda: not any(p["connected"] for p in _vhea_stats(sockdir)["ports"].values()),
              "front-ends to disconnect", timeout=10)


# ---- the whole run -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def vhea_server(sockdir: str, log_path: str, datapath: str = "auto"):
    """`vhea serve` for ports a, b as a child process (what a user runs)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vhea.cli", "serve", "--socket-dir", sockdir, "--ports", "a,b",
                                 "--log-level", "warning", "--datapath", datapath], stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(sockdir, "control.sock")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vhea serve did not start, see {log_path}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(sizes: list[int], seconds: float, dpdk: bool = True, python: bool = True, tso: bool = True,
        workdir: str | None = None, progress=None, datapaths: list[str] | tuple[str, ...] = ("native", "python"),
        inprocess: bool = True) -> list[Row]:
    say = progress or (lambda _m: None)
    rows: list[Row] = []
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="vhea-bench-")
    sockdir = tempfile.mkdtemp(prefix="vhb", dir="/tmp")  # short: unix socket paths are limited
    have_dpdk = dpdk and testpmd.available() is not None
    anchor: dict[int, float] = {}
    try:
        if have_dpdk:
            say("anchor: testpmd virtio-user -> testpmd vhost PMD")
            anchor = {s: fps for s, (fps, _cpu) in bench_anchor(workdir, sizes, seconds).items()}
            for s in sizes:
                rows.append(_row("anchor (DPDK vhost PMD)", str(s), s, anchor[s], None, anchor[s]))
        if inprocess:
            from . import microbench

            for dp in datapaths:
                for kind, s in [("plain", s) for s in sizes] + ([("tso", 0)] if tso else []):
                    say(f"vhea ({dp} datapath) alone in-process, {'64 KiB TSO' if kind == 'tso' else s} frames")
                    m = microbench.measure(dp, kind, s)
                    frame = "64K TSO -> TSO peer" if kind == "tso" else str(s)
                    # no ratio: a ceiling without front-ends is not comparable with the anchor's end-to-end rate
                    row = _row("vhea datapath alone (in-process)", frame, m["frame_bytes"], m["fps_per_core"], 1.0,
                               None,
                               f"us/frame: tx pull {m['tx_pull_us']:.2f}, rx write {m['rx_write_us']:.2f}, "
                               f"rest {m['rest_us']:.2f}; batch {m['batch']}", datapath=dp)
                    row.vhea_frames = m["frames"]
                    rows.append(row)
        for dp in datapaths:
            with vhea_server(sockdir, os.path.join(workdir, f"vhea-{dp}.log"), dp) as proc:
                rows += _bench_vhea(sockdir, workdir, proc.pid, dp, sizes, seconds, anchor, have_dpdk, python, tso,
                                    say)
    except BaseException:
        if own_workdir:
            print(f"vhea bench: logs kept in {workdir}", file=sys.stderr)
        raise
    else:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)  # logs of a run that worked are not needed
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    if not have_dpdk:
        why = "no anchor: dpdk-testpmd not found" if dpdk else "no anchor (--no-dpdk)"
        for r in rows:
            r.note = (r.note + "; " if r.note else "") + why
    return rows


def _bench_vhea(sockdir: str, workdir: str, pid: int, dp: str, sizes: list[int], seconds: float,
                anchor: dict[int, float], have_dpdk: bool, python: bool, tso: bool, say) -> list[Row]:
    rows = []
    if have_dpdk:
        say(f"vhea ({dp} datapath) with testpmd virtio-user on both ports")
        got = bench_vhea_dpdk(sockdir, workdir, sizes, seconds, pid)
        for s in sizes:
            fps, cpu, probed = got[s]
            row = _row("vhea + DPDK virtio-user", str(s), s, fps, cpu, anchor.get(s), datapath=dp)
            if probed:
                row.vhea_frames = probed[0]
                _taken(row, probed[1] / probed[2])
            rows.append(row)

    def python_row(frame: str, nbytes: int, kind: str, size: int, segmenting: bool, anchor_fps: float | None,
                   note: str = "") -> Row:
        fps, cpu, to_b, verified, bad = bench_python(sockdir, kind, size, seconds, segmenting, pid)
        row = _row("vhea + Python front-end", frame, nbytes, fps, cpu, anchor_fps, note, datapath=dp)
        row.vhea_frames, row.verified, row.bad = to_b[0], verified, bad
        _taken(row, to_b[1])
        if bad:
            row.note = (row.note + "; " if row.note else "") + f"{bad} of {verified} sampled frames DIFFERED"
        return row

    if python:
        for s in sizes:
            say(f"vhea ({dp} datapath) with the Python front-end, {s}-byte frames")
            rows.append(python_row(str(s), s, "plain", s, False, anchor.get(s)))
        if tso:
            say(f"vhea ({dp} datapath) with the Python front-end, 64 KiB TSO frames")
            rows.append(python_row("64K TSO -> TSO peer", len(tso_test_frame()), "tso", 0, False, None,
                                   "passed whole (GUEST_TSO4)"))
            rows.append(python_row("64K TSO -> plain peer", 14 + 20 + 32 + TSO_MSS, "tso", 0, True, None,
                                   "segmented + checksummed in vhea; frames = segments"))
    return rows


def _taken(row: Row, fps: float) -> None:
    row.taken_fps = fps
    row.taken_per_core = fps / row.vhea_cpu if row.vhea_cpu else None


def _order(r: Row) -> tuple:
    """Table order: the anchor, then each (front-end, frame) with its datapaths side by side."""
    kinds = ("anchor (DPDK vhost PMD)", "vhea datapath alone (in-process)", "vhea + DPDK virtio-user",
             "vhea + Python front-end")
    frame = int(r.frame) if r.frame.isdigit() else 1 << 20
    return (kinds.index(r.case) if r.case in kinds else 9, r.case, frame, r.frame, r.datapath or "")


def print_table(rows: list[Row], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"vhea bench: port a -> port b, {seconds:g} s per figure, counted at the receiver")
    for col, just in (("front-end / back-end", "left"), ("datapath", "left"), ("frame", "right"),
                      ("frames/s", "right"), ("Gb/s", "right"), ("vs anchor", "right"), ("vhea CPU", "right"),
                      ("frames/s per vhea core", "right"), ("Gb/s per vhea core", "right"),
                      ("per core vs anchor", "right"), ("taken from a per vhea core", "right"), ("note", "left")):
        t.add_column(col, justify=just)
    for r in sorted(rows, key=_order):
        per_core = r.fps_per_core
        t.add_row(r.case, r.datapath or "-", r.frame, f"{r.fps:,.0f}", f"{r.gbps:.2f}",
                  "-" if r.ratio is None else f"{r.ratio:.1%}",
                  "-" if r.vhea_cpu is None else f"{r.vhea_cpu:.0%}",
                  "-" if per_core is None else f"{per_core:,.0f}",
                  "-" if per_core is None else f"{per_core * r.frame_bytes * 8 / 1e9:.2f}",
                  "-" if r.core_ratio is None else f"{r.core_ratio:.0%}",
                  "-" if r.taken_per_core is None else f"{r.taken_per_core:,.0f}", r.note)
    console = Console()
    if not console.is_terminal:  # a log or a README: plain columns, nothing folded or cut
        print(plain_table(rows, seconds))
        return
    console.print(t)


def plain_table(rows: list[Row], seconds: float) -> str:
    """The table as fixed-width text, one line per row, the note last and whole."""
    def f(v, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    head = ("front-end / back-end", "datapath", "frame", "frames/s", "Gb/s", "vs anchor", "vhea CPU",
            "per vhea core", "Gb/s/core", "core vs anchor", "taken/core", "note")
    lines = []
    for r in sorted(rows, key=_order):
        pc = r.fps_per_core
        lines.append((r.case, r.datapath or "-", r.frame.replace("64K TSO -> TSO peer", "64K TSO whole")
                      .replace("64K TSO -> plain peer", "64K TSO->segs"), f"{r.fps:,.0f}", f"{r.gbps:.2f}",
                      f(r.ratio, "{:.1%}"), f(r.vhea_cpu, "{:.0%}"), f(pc, "{:,.0f}"),
                      f(pc and pc * r.frame_bytes * 8 / 1e9, "{:.2f}"), f(r.core_ratio, "{:.0%}"),
                      f(r.taken_per_core, "{:,.0f}"), r.note))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    out = [f"vhea bench: port a -> port b, {seconds:g} s per figure, counted at the receiver"]
    for x in [head, *lines]:
        cells = [x[0].ljust(widths[0]), x[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(x[2:-1], widths[2:],
                                                                                           strict=True)]
        out.append("  ".join(cells) + "  " + x[-1])
    return "\n".join(out)


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """One row per (case, datapath, frame): the median frames/s and CPU share over repeated runs (a shared,
    noisy machine), ratios recomputed against the median anchor; counters summed; note says how many runs."""
    import statistics

    groups: dict[tuple, list[Row]] = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r.case, r.datapath, r.frame), []).append(r)
    failed = {}
    for k, g in groups.items():  # a run that saw no traffic at all (testpmd gave up) is a failure, not a figure
        ok = [r for r in g if r.fps > 0]
        failed[k] = len(g) - len(ok)
        groups[k] = ok or g
    anchor = {k[2]: statistics.median(r.fps for r in g) for k, g in groups.items() if k[0].startswith("anchor")}
    out = []
    for (case, dp, frame), g in groups.items():
        fps = statistics.median(r.fps for r in g)
        cpus = [r.vhea_cpu for r in g if r.vhea_cpu is not None]
        cpu = statistics.median(cpus) if cpus else None
        a = anchor.get(frame) if any(r.ratio is not None for r in g) or case.startswith("anchor") else None
        row = _row(case, frame, g[0].frame_bytes, fps, cpu, a, g[0].note, dp)
        if cpus:  # per core: the median of the runs' own figures (fps and CPU share move together)
            row.fps_per_core = statistics.median(r.fps_per_core for r in g if r.fps_per_core)
            row.core_ratio = row.fps_per_core / a if a else None
        taken = [r.taken_per_core for r in g if r.taken_per_core]
        if taken:
            row.taken_fps = statistics.median(r.taken_fps for r in g if r.taken_fps is not None)
            row.taken_per_core = statistics.median(taken)
        for name in ("vhea_frames", "verified", "bad"):
            vals = [getattr(r, name) for r in g if getattr(r, name) is not None]
            setattr(row, name, sum(vals) if vals else None)
        if len(runs) > 1:
            spread = f"{min(r.fps for r in g):,.0f}..{max(r.fps for r in g):,.0f}"
            row.note = (row.note + "; " if row.note else "") + f"median of {len(g)} runs ({spread})"
            if failed[(case, dp, frame)]:
                row.note += f"; {failed[(case, dp, frame)]} run(s) saw no traffic"
        out.append(row)
    return out


def to_json(rows: list[Row], seconds: float) -> str:
    return json.dumps({"seconds": seconds, "rows": [asdict(r) for r in rows]})

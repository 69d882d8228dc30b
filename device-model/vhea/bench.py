"""`vhea bench`: frames/s and Gb/s through the device model, port a -> port b, against DPDK's vhost PMD.

One run measures, each for `seconds` after a short warm-up:
- anchor: DPDK testpmd virtio-user (txonly) -> DPDK's own vhost PMD in testpmd (rxonly), no vhea (bench_dpdk);
- vhea datapath alone (in-process, microbench): the service code on pre-filled rings in one process: no
  front-end, no syscalls, one core by construction; its frames/s is the datapath's ceiling;
- vhea + DPDK: testpmd virtio-user txonly on port a, testpmd virtio-user rxonly on port b (bench_dpdk);
- vhea + Python: the built-in front-end (vhea.frontend) as sender on a and receiver on b, each in its own
  process; with 64 KiB TSO frames too (bench_python).
The vhea cases run once per datapath (`vhea serve --datapath native`, then `python`), so both stand side by
side with the anchor of the same run. Frame sizes are testpmd's `txpkts` (the Ethernet frame without FCS).
Rates are counted at the receiver. 64 KiB TSO frames come from the Python front-end only: testpmd's txonly
engine builds plain UDP frames (its TSO, `tso set`, belongs to the csum engine, which forwards what it receives).
The figures and the table are bench_report's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from . import microbench, native, testpmd
from .bench_dpdk import bench_anchor, bench_vhea_dpdk
from .bench_frames import TSO_MSS, tso_test_frame
from .bench_python import bench_python
from .bench_report import Row, make_row, median_rows, print_table, set_taken, to_json
from .bench_serve import vhea_server
from .errors import UsageError


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
            anchor = {s: figure.fps for s, figure in bench_anchor(workdir, sizes, seconds).items()}
            for s in sizes:
                rows.append(make_row("anchor (DPDK vhost PMD)", str(s), s, anchor[s], None, anchor[s]))
        if inprocess:
            for dp in datapaths:
                for kind, s in [("plain", s) for s in sizes] + ([("tso", 0)] if tso else []):
                    say(f"vhea ({dp} datapath) alone in-process, {'64 KiB TSO' if kind == 'tso' else s} frames")
                    m = microbench.measure(dp, kind, s)
                    frame = "64K TSO -> TSO peer" if kind == "tso" else str(s)
                    # no ratio: a ceiling without front-ends is not comparable with the anchor's end-to-end rate
                    row = make_row("vhea datapath alone (in-process)", frame, m["frame_bytes"], m["fps_per_core"],
                                   1.0, None,
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
            row = make_row("vhea + DPDK virtio-user", str(s), s, fps, cpu, anchor.get(s), datapath=dp)
            if probed:
                row.vhea_frames = probed.into_b
                set_taken(row, probed.taken_from_a / probed.seconds)
            rows.append(row)

    def python_row(frame: str, nbytes: int, kind: str, size: int, segmenting: bool, anchor_fps: float | None,
                   note: str = "") -> Row:
        got = bench_python(sockdir, kind, size, seconds, segmenting, pid)
        bad, verified = got.bad, got.verified
        row = make_row("vhea + Python front-end", frame, nbytes, got.fps, got.cpu, anchor_fps, note, datapath=dp)
        row.vhea_frames, row.verified, row.bad = got.into_b, verified, bad
        set_taken(row, got.taken_fps)
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


def cli_main(args: argparse.Namespace) -> int:
    """`vhea bench` after parsing (vhea.cli): check the options, run `--repeats` times, print the table or JSON."""
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError as e:
        raise UsageError(f"--sizes {args.sizes!r}: {e}") from e
    if not sizes or any(not 60 <= s <= 1518 for s in sizes):
        raise UsageError("--sizes must be frame sizes in 60..1518")
    if not 0.2 <= args.duration <= 60:
        raise UsageError("--duration must be in 0.2..60")
    progress = None if args.json else (lambda m: print(f"vhea bench: {m}", file=sys.stderr, flush=True))
    datapaths = ["native", "python"] if args.datapath == "both" else [args.datapath]
    if "native" in datapaths and native.MOD is None:
        if args.datapath == "native":
            raise UsageError(f"the native datapath is not available: {native.why_not}")
        print(f"vhea bench: native datapath not available ({native.why_not}); measuring the Python datapath only",
              file=sys.stderr)
        datapaths.remove("native")
    if not 1 <= args.repeats <= 20:
        raise UsageError("--repeats must be in 1..20")
    runs = []
    for repeat_index in range(args.repeats):
        if progress and args.repeats > 1:
            progress(f"run {repeat_index + 1} of {args.repeats}")
        runs.append(run(sizes, args.duration, dpdk=not args.no_dpdk, python=not args.no_python, tso=not args.no_tso,
                        progress=progress, datapaths=datapaths, inprocess=not args.no_inprocess))
    rows = runs[0] if args.repeats == 1 else median_rows(runs)
    if args.json:
        print(to_json(rows, args.duration))
    else:
        print_table(rows, args.duration)
    return 0

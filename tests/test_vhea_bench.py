"""`vhea bench`: the Python front-end part runs without DPDK; the DPDK part (with the anchor) is a vm test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vhea import bench, native, testpmd
from vhea.cli import main

#: the datapaths `vhea bench` measures side by side here
DATAPATHS = ["native", "python"] if native.MOD is not None else ["python"]


def test_tso_test_frame_is_a_valid_tcp_frame():
    from vhea import offload

    f = bench.tso_test_frame(3000)
    h = offload.parse(f)
    assert (h.l3, h.l4, h.l4_end, h.proto) == (14, 34, 66, 6)
    assert offload.verify_ipv4_header(f, 14)
    assert len(f) == 66 + 3000


def test_bench_usage_errors(capsys):
    assert main(["bench", "--sizes", "59"]) == 2
    assert main(["bench", "--sizes", "x"]) == 2
    assert main(["bench", "--seconds", "0"]) == 2
    assert "vhea: error" in capsys.readouterr().err


def test_python_front_end_bench_json():
    """Short Python-only run, both datapaths: positive rates, frames counted by vhea and sampled frames verified
    byte for byte at the receiver, TSO rows consistent (segments are ~45 per TSO frame). No speed is asserted."""
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--no-dpdk", "--sizes", "64", "--seconds", "0.5",
                        "--json"], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    rows = {(r["case"], r["datapath"], r["frame"]): r for r in out["rows"]}
    alone = {k: r for k, r in rows.items() if k[0] == "vhea datapath alone (in-process)"}
    assert set(alone) == {("vhea datapath alone (in-process)", dp, f) for dp in DATAPATHS
                          for f in ("64", "64K TSO -> TSO peer")}
    for r in alone.values():
        assert r["fps"] > 0 and r["vhea_cpu"] == 1.0 and r["vhea_frames"] > 0, r
    rows = {k: r for k, r in rows.items() if k not in alone}
    assert set(rows) == {("vhea + Python front-end", dp, f) for dp in DATAPATHS
                         for f in ("64", "64K TSO -> TSO peer", "64K TSO -> plain peer")}
    for r in rows.values():
        assert r["fps"] > 0
        assert r["gbps"] == pytest.approx(r["fps"] * r["frame_bytes"] * 8 / 1e9)
        assert r["ratio"] is None and r["core_ratio"] is None  # no anchor without DPDK
        assert r["vhea_frames"] > 0, r  # vhea's own counters saw the frames
        assert r["taken_fps"] > 0 and r["taken_per_core"] == pytest.approx(r["taken_fps"] / r["vhea_cpu"])
        assert r["verified"] > 0 and r["bad"] == 0, r  # the receiver compared some, and all were right
    for dp in DATAPATHS:
        assert rows[("vhea + Python front-end", dp, "64K TSO -> TSO peer")]["frame_bytes"] > 65000


def test_bench_one_datapath_and_usage(capsys):
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--no-dpdk", "--no-tso", "--sizes", "1518",
                        "--seconds", "0.3", "--datapath", "python", "--no-inprocess", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert [(r["datapath"], r["frame"]) for r in rows] == [("python", "1518")]
    assert rows[0]["verified"] > 0 and rows[0]["bad"] == 0


@pytest.mark.vm
@pytest.mark.skipif(testpmd.available() is None, reason="dpdk-testpmd is not installed (apt: dpdk)")
def test_bench_with_dpdk_and_anchor():
    """The whole bench, short: every figure positive, ratios = figure / anchor, DPDK anchor faster than vhea."""
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--sizes", "64,1518", "--seconds", "1",
                        "--no-tso", "--json"], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    by = {(r["case"], r["datapath"], r["frame"]): r for r in rows}
    for size in ("64", "1518"):
        anchor = by[("anchor (DPDK vhost PMD)", None, size)]
        assert anchor["fps"] > 0 and anchor["ratio"] == 1.0
        for dp in DATAPATHS:
            for case in ("vhea + DPDK virtio-user", "vhea + Python front-end"):
                r = by[(case, dp, size)]
                assert r["fps"] > 0, r
                assert r["vhea_frames"] > 0, r
                assert r["taken_fps"] >= r["vhea_frames"] / 2, r  # taken from a in the window (1 s)
                assert r["ratio"] == pytest.approx(r["fps"] / anchor["fps"])
                assert r["core_ratio"] == pytest.approx(r["fps_per_core"] / anchor["fps"])
                assert r["gbps"] == pytest.approx(r["fps"] * int(size) * 8 / 1e9)
            assert by[("vhea + Python front-end", dp, size)]["bad"] == 0


@pytest.mark.parametrize("kind, size", [("plain", 64), ("plain", 1518), ("tso", 0)])
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_inprocess_datapath_figures(datapath, kind, size):
    """The datapath-alone measurement forwards every frame (it checks counts, drops and the bytes itself)."""
    from vhea import microbench

    m = microbench.measure(datapath, kind, size, rounds=3)
    assert m["datapath"] == datapath and m["frames"] == 8 * m["batch"] > 0
    assert m["us_per_frame"] > 0 and m["fps_per_core"] == pytest.approx(1e6 / m["us_per_frame"])
    assert m["tx_pull_us"] > 0 and m["rx_write_us"] > 0


def test_median_rows_over_repeated_runs():
    def run(anchor, vhea, cpu):
        return [bench._row("anchor (DPDK vhost PMD)", "64", 64, anchor, None, anchor),
                bench._row("vhea + DPDK virtio-user", "64", 64, vhea, cpu, anchor, datapath="native")]

    rows = {(r.case, r.datapath): r for r in bench.median_rows([run(100, 10, 0.5), run(300, 30, 0.5),
                                                                run(200, 50, 0.25)])}
    a, v = rows[("anchor (DPDK vhost PMD)", None)], rows[("vhea + DPDK virtio-user", "native")]
    assert a.fps == 200 and a.ratio == 1.0
    assert v.fps == 30 and v.ratio == pytest.approx(30 / 200) and v.vhea_cpu == 0.5
    assert v.fps_per_core == 60 and v.core_ratio == pytest.approx(60 / 200)
    assert "median of 3 runs (10..50)" in v.note


def test_median_rows_leave_out_runs_without_traffic():
    def run(anchor, vhea):
        return [bench._row("anchor (DPDK vhost PMD)", "64", 64, anchor, None, anchor),
                bench._row("vhea + DPDK virtio-user", "64", 64, vhea, 0.5 if vhea else None, anchor,
                           datapath="native")]

    rows = {r.case: r for r in bench.median_rows([run(0, 0), run(300, 30), run(100, 10)])}
    assert rows["anchor (DPDK vhost PMD)"].fps == 200 and rows["anchor (DPDK vhost PMD)"].ratio == 1.0
    v = rows["vhea + DPDK virtio-user"]
    assert v.fps == 20 and v.ratio == pytest.approx(0.1) and "1 run(s) saw no traffic" in v.note


def test_plain_table_has_every_row_whole():
    rows = [bench._row("anchor (DPDK vhost PMD)", "64", 64, 1e6, None, 1e6),
            bench._row("vhea + DPDK virtio-user", "64", 64, 2e5, 0.25, 1e6, "a long note " * 5, datapath="native")]
    text = bench.plain_table(rows, 2).splitlines()
    assert len(text) == 4 and "frames/s" in text[1]
    assert text[3].split()[:4] == ["vhea", "+", "DPDK", "virtio-user"] and "800,000" in text[3]
    assert text[3].endswith("a long note " * 5)

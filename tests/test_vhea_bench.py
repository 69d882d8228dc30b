"""`vhea bench`: the Python front-end part runs without DPDK; the DPDK part (with the anchor) is a vm test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vhea import native, testpmd
from vhea.cli import main

#: the datapaths `vhea bench` measures side by side here
DATAPATHS = ["native", "python"] if native.MOD is not None else ["python"]


def test_bench_usage_errors(capsys):
    assert main(["bench", "--sizes", "59"]) == 2
    assert main(["bench", "--sizes", "x"]) == 2
    assert main(["bench", "--duration", "0"]) == 2
    assert "vhea: error" in capsys.readouterr().err


def test_the_renamed_seconds_flag_names_its_new_name(capsys):
    """One word, one meaning: `--duration` is measured seconds everywhere (isoperf, playbooks, bench-vm)."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--seconds", "2"])
    assert exc.value.code == 2 and "renamed: use --duration" in capsys.readouterr().err


def test_python_front_end_bench_json():
    """Short Python-only run, both datapaths: positive rates, frames counted by vhea and sampled frames verified
    byte for byte at the receiver, TSO rows consistent (segments are ~45 per TSO frame). No speed is asserted."""
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--no-dpdk", "--sizes", "64", "--duration", "0.5",
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
                        "--duration", "0.3", "--datapath", "python", "--no-inprocess", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert [(r["datapath"], r["frame"]) for r in rows] == [("python", "1518")]
    assert rows[0]["verified"] > 0 and rows[0]["bad"] == 0


@pytest.mark.vm
@pytest.mark.skipif(testpmd.available() is None, reason="dpdk-testpmd is not installed (apt: dpdk)")
def test_bench_with_dpdk_and_anchor():
    """The whole bench, short: every figure positive, ratios = figure / anchor, DPDK anchor faster than vhea."""
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--sizes", "64,1518", "--duration", "1",
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

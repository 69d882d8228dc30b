"""`vhea bench`: the Python front-end part runs without DPDK; the DPDK part (with the anchor) is a vm test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vhea import bench, testpmd
from vhea.cli import main


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
    """Short Python-only run: positive rates, TSO rows consistent (segments are ~45 per TSO frame)."""
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--no-dpdk", "--sizes", "64", "--seconds", "0.5",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    rows = {(r["case"], r["frame"]): r for r in out["rows"]}
    assert set(rows) == {("vhea + Python front-end", "64"), ("vhea + Python front-end", "64K TSO -> TSO peer"),
                         ("vhea + Python front-end", "64K TSO -> plain peer")}
    for r in rows.values():
        assert r["fps"] > 0
        assert r["gbps"] == pytest.approx(r["fps"] * r["frame_bytes"] * 8 / 1e9)
        assert r["ratio"] is None  # no anchor without DPDK
    assert rows[("vhea + Python front-end", "64K TSO -> TSO peer")]["frame_bytes"] > 65000


@pytest.mark.vm
@pytest.mark.skipif(testpmd.available() is None, reason="dpdk-testpmd is not installed (apt: dpdk)")
def test_bench_with_dpdk_and_anchor():
    """The whole bench, short: every figure positive, ratios = figure / anchor, DPDK anchor faster than vhea."""
    p = subprocess.run([sys.executable, "-m", "vhea.cli", "bench", "--sizes", "64,1518", "--seconds", "1",
                        "--no-tso", "--json"], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    by = {(r["case"], r["frame"]): r for r in rows}
    for size in ("64", "1518"):
        anchor = by[("anchor (DPDK vhost PMD)", size)]
        assert anchor["fps"] > 0 and anchor["ratio"] == 1.0
        for case in ("vhea + DPDK virtio-user", "vhea + Python front-end"):
            r = by[(case, size)]
            assert r["fps"] > 0, r
            assert r["ratio"] == pytest.approx(r["fps"] / anchor["fps"])
            assert r["gbps"] == pytest.approx(r["fps"] * int(size) * 8 / 1e9)
        assert by[("vhea + DPDK virtio-user", size)]["fps"] < anchor["fps"]

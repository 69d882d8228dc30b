"""The result of `vhea bench` (vhea.bench_report): medians of repeated runs, the plain table."""

from __future__ import annotations

import pytest

from vhea.bench_report import make_row, median_rows, plain_table


def test_median_rows_over_repeated_runs():
    def run(anchor, vhea, cpu):
        return [make_row("anchor (DPDK vhost PMD)", "64", 64, anchor, None, anchor),
                make_row("vhea + DPDK virtio-user", "64", 64, vhea, cpu, anchor, datapath="native")]

    rows = {(r.case, r.datapath): r for r in median_rows([run(100, 10, 0.5), run(300, 30, 0.5),
                                                          run(200, 50, 0.25)])}
    a, v = rows[("anchor (DPDK vhost PMD)", None)], rows[("vhea + DPDK virtio-user", "native")]
    assert a.fps == 200 and a.ratio == 1.0
    assert v.fps == 30 and v.ratio == pytest.approx(30 / 200) and v.vhea_cpu == 0.5
    assert v.fps_per_core == 60 and v.core_ratio == pytest.approx(60 / 200)
    assert "median of 3 runs (10..50)" in v.note


def test_median_rows_leave_out_runs_without_traffic():
    def run(anchor, vhea):
        return [make_row("anchor (DPDK vhost PMD)", "64", 64, anchor, None, anchor),
                make_row("vhea + DPDK virtio-user", "64", 64, vhea, 0.5 if vhea else None, anchor,
                         datapath="native")]

    rows = {r.case: r for r in median_rows([run(0, 0), run(300, 30), run(100, 10)])}
    assert rows["anchor (DPDK vhost PMD)"].fps == 200 and rows["anchor (DPDK vhost PMD)"].ratio == 1.0
    v = rows["vhea + DPDK virtio-user"]
    assert v.fps == 20 and v.ratio == pytest.approx(0.1) and "1 run(s) saw no traffic" in v.note


def test_plain_table_has_every_row_whole():
    rows = [make_row("anchor (DPDK vhost PMD)", "64", 64, 1e6, None, 1e6),
            make_row("vhea + DPDK virtio-user", "64", 64, 2e5, 0.25, 1e6, "a long note " * 5,
                     datapath="native")]
    text = plain_table(rows, 2).splitlines()
    assert len(text) == 4 and "frames/s" in text[1]
    assert text[3].split()[:4] == ["vhea", "+", "DPDK", "virtio-user"] and "800,000" in text[3]
    assert text[3].endswith("a long note " * 5)

"""A run's figures, drawn from synthetic runs with known figures: what each plot carries (the data and the
matplotlib Figure's bars, lines and error bars), the files, and that importing the harness loads no matplotlib."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from isoperf.stats import latency_histogram
from testbed.harness import figures

ROOT = Path(__file__).resolve().parents[1]


def case(test="stream", stack="legacy", size=64, conns=1, repeat=0, mps=1000.0, busy=50.0, host_pct=None,
         latency=None, name=None, error=None):
    """One case record as run.json stores it, with only what the figures read."""
    iso = {"messages_per_s": mps, "throughput_bps": mps * size * 8, "cpu": {"client": {"all": busy}}}
    if latency is not None:
        iso["transactions_per_s"] = mps
        iso["latency_us"] = latency
    rec = {"test_name": name or f"{test}-t", "test": test, "stack": stack, "locks": False, "instances": 1,
           "size": size, "connections": conns, "repeat": repeat, "client": "iso-a", "status": "failed" if error
           else "ok", "error": error, "isoperf": None if error else iso, "host_cpu": None}
    if host_pct is not None:
        rec["host_cpu"] = {"interval_s": 6.0, "client": "iso-a",
                           "guests": {"iso-a": {"role": "client", "vcpu_pct": host_pct}},
                           "client_messages_per_host_cpu_s": mps / (host_pct / 100)}
    return rec


def run_of(cases, seed=7):
    return {"format": 1, "run_id": "20261206T000000Z", "playbook": {"name": "synthetic"},
            "metadata": {"git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True},
                         "hostname": "benchhost", "host_cpu_count": 4, "host_cpu_model": "Test CPU 3000"},
            "topology": {"accel": "tcg", "guests": [{"name": "iso-a", "vcpus": 2}, {"name": "iso-b", "vcpus": 2}]},
            "statistics": {"seed": seed, "resamples": 500, "confidence": 0.95}, "cases": cases}


def size_sweep(repeats=3, host=True):
    """legacy and iso at 64 B, 1 KiB and 64 KiB; iso sends 10× the messages at the same CPU."""
    out = []
    for r in range(repeats):
        for size in (64, 1024, 65536):
            for stack, mps in (("legacy", 1000.0), ("iso", 10000.0)):
                jitter = 1 + 0.01 * r
                out.append(case(stack=stack, size=size, repeat=r, mps=mps * jitter, busy=40.0 + r,
                                host_pct=90.0 + r if host else None))
    return run_of(out)


def _bars(ax):
    from matplotlib.container import BarContainer

    return {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}


def _errorbars(ax):
    from matplotlib.container import ErrorbarContainer

    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_throughput_against_size_has_a_bar_per_stack_and_size_and_the_cpu_lines():
    run = size_sweep()
    (plot,) = [p for p in figures.plots(run) if p.name.endswith("-throughput-vs-size")]
    assert plot.xs == [64, 1024, 65536] and plot.ylabel == "throughput, Gb/s"
    assert [s.label for s in plot.series] == ["legacy", "iso"]
    iso = plot.series[1].values[1024]
    assert iso.median == pytest.approx(10000 * 1.01 * 1024 * 8 / 1e9)
    assert iso.low <= iso.median <= iso.high and iso.n == 3
    assert plot.series[0].cpu[64].median == pytest.approx(91.0)  # host: the vCPU threads' % of one core
    assert "host" in plot.cpu_label

    fig = figures.render(plot)
    ax, cpu_ax = fig.axes
    bars = _bars(ax)
    assert list(bars) == ["legacy", "iso"] and all(len(b) == 3 for b in bars.values())
    heights = [b.get_height() for b in bars["iso"]]
    assert heights == pytest.approx([10100 * s * 8 / 1e9 for s in (64, 1024, 65536)])
    assert len(_errorbars(ax)) == 2  # one per series: every point has an interval
    lines = {ln.get_label(): ln for ln in cpu_ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(lines) == {"legacy CPU", "iso CPU"} and len(lines["iso CPU"].get_xdata()) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64 B", "1 KiB", "64 KiB"]


def test_connections_sweep_plots_messages_per_second_and_both_axes_get_a_figure_each():
    cases = [case(stack=s, size=size, conns=n, repeat=r, mps=m * n, busy=30.0)
             for r in range(2) for size in (64, 1024) for n in (1, 4, 16) for s, m in (("legacy", 1e3), ("iso", 1e4))]
    plots = {p.name: p for p in figures.plots(run_of(cases))}
    by_conns = plots["stream-t-throughput-vs-connections"]
    assert by_conns.ylabel == "messages/s" and by_conns.xs == [1, 4, 16]
    assert [s.label for s in by_conns.series] == ["legacy, 64 B", "legacy, 1 KiB", "iso, 64 B", "iso, 1 KiB"]
    assert by_conns.series[2].values[16].median == pytest.approx(16e4)
    by_size = plots["stream-t-throughput-vs-size"]
    assert [s.label for s in by_size.series][:3] == ["legacy, 1 conn", "legacy, 4 conns", "legacy, 16 conns"]
    assert len(_bars(figures.render(by_size).axes[0])) == 6


def test_cpu_falls_back_to_the_guests_view_and_failed_repeats_are_left_out():
    run = size_sweep(repeats=2, host=False)
    run["cases"].append(case(stack="iso", size=64, repeat=2, error="isoperf client exited 1"))
    (plot,) = [p for p in figures.plots(run) if "throughput" in p.name]
    assert "guest /proc/stat" in plot.cpu_label
    assert plot.series[0].cpu[64].median == pytest.approx(40.5 * 2)  # busy share of 2 vCPUs, as % of one core
    assert plot.series[1].values[64].n == 2


def test_one_repeat_draws_the_bar_without_an_interval():
    (plot,) = [p for p in figures.plots(size_sweep(repeats=1)) if "throughput" in p.name]
    assert plot.series[0].values[64].low is None
    ax = figures.render(plot).axes[0]
    assert len(_bars(ax)["iso"]) == 3 and _errorbars(ax) == []


def test_ratio_figure_is_messages_per_host_cpu_second_as_a_multiple_of_legacy():
    run = size_sweep()
    (ratio,) = [p for p in figures.plots(run) if p.name == "per-cpu-vs-legacy"]
    assert [s.label for s in ratio.series] == ["iso"] and len(ratio.xs) == 3
    value = ratio.series[0].values[ratio.xs[0]]
    assert value.median == pytest.approx(10.0) and value.low <= 10.0 <= value.high
    assert "host CPU-second" in ratio.title and ratio.baseline == 1.0
    ax = figures.render(ratio).axes[0]
    assert len(_bars(ax)["iso"]) == 3
    assert [t.get_text() for t in ax.texts] == ["10.0×"] * 3


def test_ratio_figure_uses_the_guests_cpu_without_host_records_and_needs_a_legacy_case():
    run = size_sweep(host=False)
    (ratio,) = [p for p in figures.plots(run) if p.name == "per-cpu-vs-legacy"]
    assert "consumed CPU-second" in ratio.title
    assert ratio.series[0].values[ratio.xs[0]].median == pytest.approx(10.0)
    legacy_only = run_of([c for c in run["cases"] if c["stack"] == "legacy"])
    assert figures.ratio_plot(legacy_only) is None


def peer_to_guest(server_stack, size, repeat, mps, receiver_pct, receiver_busy):
    """A peer -> iso-b receive case (rx-throughput.yaml): the peer's /proc/stat is the whole host's (busy 97 %),
    the receiving guest's CPU is what counts."""
    rec = case(size=size, repeat=repeat, mps=mps, busy=97.0)
    rec.update(client="peer", server="iso-b", server_stack=server_stack)
    rec["isoperf"]["cpu"]["server"] = {"all": receiver_busy}
    rec["host_cpu"] = {"interval_s": 6.0, "client": None,
                       "guests": {"iso-b": {"role": "server", "vcpu_pct": receiver_pct}},
                       "client_messages_per_host_cpu_s": None,
                       "server_messages_per_host_cpu_s": mps / (receiver_pct / 100)}
    return rec


def test_a_receive_run_draws_the_receiving_guests_cpu_and_compares_legacy_to_iso_receiving():
    cases = [peer_to_guest(srv, size, r, mps, pct, busy) for r in range(3) for size in (64, 16384)
             for srv, mps, pct, busy in (("legacy", 1000.0, 80.0, 30.0), ("iso", 2000.0, 40.0, 20.0))]
    plots = {p.name: p for p in figures.plots(run_of(cases))}
    (tput,) = [p for n, p in plots.items() if n.endswith("-throughput-vs-size")]
    assert [s.label for s in tput.series] == ["legacy", "legacy→iso"]
    assert tput.series[0].cpu[64].median == pytest.approx(80.0)  # iso-b's vCPU threads, not the peer's host
    assert tput.series[1].cpu[16384].median == pytest.approx(40.0)
    assert "receiving guest CPU" in tput.cpu_label and "receiving guest" in tput.title
    ratio = plots["per-cpu-vs-legacy"]  # legacy→iso against legacy→legacy, per host CPU of the receiver
    assert [s.label for s in ratio.series] == ["legacy→iso"] and len(ratio.xs) == 2
    assert ratio.series[0].values[ratio.xs[0]].median == pytest.approx(4.0)
    assert "receiving guest" in ratio.title
    without_host = [{**c, "host_cpu": None} for c in cases]  # the guests' /proc/stat: iso-b's, 2 vCPUs
    (tput,) = [p for p in figures.plots(run_of(without_host)) if p.name.endswith("-throughput-vs-size")]
    assert tput.series[0].cpu[64].median == pytest.approx(60.0) and "guest /proc/stat" in tput.cpu_label
    ratio = figures.ratio_plot(run_of(without_host))
    assert ratio.series[0].values[ratio.xs[0]].median == pytest.approx(2000 / 0.4 / (1000 / 0.6))


def test_rr_latency_is_percentile_bars_per_stack_and_size():
    cases = [case(test="rr", stack=s, size=size, repeat=r, mps=500.0,
                  latency={"p50": base * size, "p90": 2 * base * size, "p99": 5 * base * size, "max": 1e6})
             for r in range(3) for size in (64, 1024) for s, base in (("legacy", 10.0), ("iso", 1.0))]
    (plot,) = [p for p in figures.plots(run_of(cases)) if "latency" in p.name]
    assert plot.name == "rr-t-latency-vs-size" and plot.ylabel == "latency, µs"
    assert [s.label for s in plot.series] == ["legacy p50", "legacy p90", "legacy p99", "iso p50", "iso p90",
                                              "iso p99"]
    assert plot.series[5].values[1024].median == pytest.approx(5 * 1024)
    assert plot.log  # 64 µs .. 51 ms
    assert "no latency histogram" in plot.note  # these records have percentiles only: no CDF
    assert not [p for p in figures.plots(run_of(cases)) if isinstance(p, figures.CdfPlot)]
    ax = figures.render(plot).axes[0]
    assert len(_bars(ax)) == 6 and all(len(b) == 2 for b in _bars(ax).values())
    assert ax.get_yscale() == "log"


def test_draw_writes_valid_png_and_svg_files(tmp_path):
    written = figures.draw(size_sweep(), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["per-cpu-vs-legacy.png", "per-cpu-vs-legacy.svg", "stream-t-throughput-vs-size.png",
                     "stream-t-throughput-vs-size.svg"]
    for p in written:
        assert p.parent == tmp_path / "figures" and p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.parse(p).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_a_run_with_nothing_to_draw_writes_nothing(tmp_path):
    run = run_of([case(error="boom"), case(test="crr", error="boom")])
    assert figures.plots(run) == [] and figures.draw(run, tmp_path) == []
    assert not (tmp_path / "figures").exists()


def test_odd_test_names_make_safe_unique_file_names():
    cases = [case(name="a/b c", size=64), case(name="a b/c", size=64)]
    names = [p.name for p in figures.plots(run_of(cases))]
    assert names == ["a-b-c-throughput-vs-size", "a-b-c-throughput-vs-size-2"]


def test_importing_the_harness_loads_no_matplotlib():
    code = ("import sys, testbed.harness.benchmark, testbed.harness.publish, testbed.harness.figures;"
            "print([m for m in sys.modules if m.startswith('matplotlib')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "matplotlib" not in out.stdout


def test_a_test_at_one_point_is_a_bar_per_stack_in_messages_per_second():
    cases = [case(stack=s, repeat=r, mps=m) for r in range(3) for s, m in (("legacy", 1e4), ("iso", 1e5))]
    (plot, ratio) = figures.plots(run_of(cases))
    assert plot.name == "stream-t-throughput-vs-size" and plot.xs == [64] and plot.ylabel == "messages/s"
    assert [(s.label, s.values[64].median) for s in plot.series] == [("legacy", 1e4), ("iso", 1e5)]
    assert ratio.name == "per-cpu-vs-legacy"


def rr_with_histograms():
    """rr at 64 B and 1 KiB, 2 repeats: legacy's latencies 1000..1999 µs, iso's 100..199 µs (one per µs)."""
    out = []
    for r in range(2):
        for size in (64, 1024):
            for stack, base in (("legacy", 1000), ("iso", 100)):
                rec = case(test="rr", stack=stack, size=size, repeat=r, mps=500.0,
                           latency={"p50": 1.5 * base, "p90": 1.9 * base, "p99": 1.99 * base})
                rec["isoperf"]["latency_histogram"] = latency_histogram([us * 1000 for us in range(base, 2 * base)])
                out.append(rec)
    return run_of(out)


def test_rr_records_with_histograms_get_a_latency_cdf_per_point_and_stack():
    plots = figures.plots(rr_with_histograms())
    (bars,) = [p for p in plots if p.name == "rr-t-latency-vs-size"]
    assert "no latency histogram" not in bars.note
    (cdf,) = [p for p in plots if isinstance(p, figures.CdfPlot)]
    assert cdf.name == "rr-t-latency-cdf" and list(cdf.panels) == [(64, 1), (1024, 1)]
    legacy, iso = cdf.panels[(64, 1)]
    assert (legacy.label, iso.label) == ("legacy", "iso")
    assert (legacy.n, iso.n) == (2 * 1000, 2 * 100)  # both repeats' transactions
    assert legacy.fraction[0] == 0.0 and legacy.fraction[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(legacy.fraction, legacy.fraction[1:], strict=False))
    # the median read off the CDF is the true one (1500 µs) within a bucket (12.2 %)
    median = next(x for x, f in zip(legacy.latency_us, legacy.fraction, strict=True) if f >= 0.5)
    assert 1500 <= median <= 1500 * 1.13
    assert iso.latency_us[0] <= 100 and iso.latency_us[-1] >= 199

    fig = figures.render(cdf)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert [ln.get_label() for ln in lines] == ["legacy", "iso"] and ax.get_xscale() == "log"
        assert lines[0].get_ydata()[-1] == pytest.approx(1.0)


def test_histograms_of_the_repeats_add_up_on_a_common_grid():
    a = latency_histogram([1_000_000] * 3)  # 1000 µs
    b = latency_histogram([10_000] * 2 + [1_000_000])  # 10 µs and 1000 µs
    per, first, counts = figures.merged_histogram([a, b])
    assert per == 20 and first == pytest.approx(10.0) and len(counts) == 41
    assert counts[0] == 2 and counts[40] == 4 and sum(counts) == 6


def test_a_malformed_histogram_is_left_out_not_drawn():
    run = rr_with_histograms()
    bad = [{"buckets_per_decade": 20, "first_us": -1, "counts": [1]}, {"buckets_per_decade": "20"},
           {"buckets_per_decade": 20, "first_us": 1.0, "counts": [1] * (figures.MAX_BUCKETS + 1)},
           {"buckets_per_decade": 20, "first_us": 1.0, "counts": [1, -2]}, "x"]
    for c, h in zip(run["cases"], bad, strict=False):
        c["isoperf"]["latency_histogram"] = h
    # left: repeat 2's iso at 64 B, and repeat 2's legacy and iso at 1 KiB
    (cdf,) = [p for p in figures.plots(run) if isinstance(p, figures.CdfPlot)]
    assert {point: [(line.label, line.n) for line in lines] for point, lines in cdf.panels.items()} == {
        (64, 1): [("iso", 100)], (1024, 1): [("legacy", 1000), ("iso", 100)]}


def test_ratio_figure_compares_a_preloaded_program_with_the_same_program_on_kernel_sockets():
    out = []
    for r in range(2):
        for program, stack, frontend, mps in (("iperf3", "legacy", "kernel", 1000.0),
                                              ("iperf3", "iso", "preload", 3000.0),
                                              ("isoperf", "legacy", "kernel", 2000.0),
                                              ("isoperf", "iso", "preload", 4000.0)):
            out.append({**case(stack=stack, repeat=r, mps=mps, host_pct=90.0), "program": program,
                        "frontend": frontend})
    (ratio,) = [p for p in figures.plots(run_of(out)) if p.name == "per-cpu-vs-legacy"]
    medians = {s.label: s.values[ratio.xs[0]].median for s in ratio.series}
    assert medians == {"iperf3 iso(preload)": pytest.approx(3.0), "iso(preload)": pytest.approx(2.0)}

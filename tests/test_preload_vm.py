"""Unmodified programs over IsoStack inside the guests, through isostack-run (docs/preload.md).

One testbed (its own state dir), one `fab run-benchmark` of tests/fixtures/preload-vm.yaml: Debian's iperf3
(client and server), sockperf ping-pong (client and server) and isoperf's kernel-socket stack, each with both
ends under isostack-run in iso-a and iso-b. The shim and the launcher reach the guests with the uploaded
isostack folder (built on the host: the guests have no compiler). Every case must be ok, carried by the device
model, and each end's isostackd must show the program's bytes (the harness's iso_traffic check, asserted here
again from the raw counters). Then, in a guest, isostack-run says clearly when no isostackd runs.
"""

from __future__ import annotations

import json

import pytest
from vm_helpers import BIN, run

pytestmark = pytest.mark.vm

PLAYBOOK = "tests/fixtures/preload-vm.yaml"
EXPECTED = {"iperf3-64": "iperf3", "sockperf-64": "sockperf", "isoperf-1448": "isoperf"}


@pytest.fixture(scope="module")
def benchmark(testbed):
    results = testbed.state / "results"
    out = run([str(BIN / "fab"), "run-benchmark", "--playbook", PLAYBOOK, "--results-dir", str(results)],
              timeout=900, env=testbed.env, check=False)
    run_json = next(results.glob("*/run.json"), None)
    assert run_json is not None, f"no run stored\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return {c["test_name"]: c for c in json.loads(run_json.read_text())["cases"]}, out


def test_both_ends_of_each_program_went_through_isostackd(benchmark):
    cases, out = benchmark
    assert {name: c["program"] for name, c in cases.items()} == EXPECTED
    for name, case in cases.items():
        assert case["status"] == "ok", (name, case.get("error"), case.get("isostackd_log"), case.get("server_log"))
        assert case["frontend"] == "preload" and case["stack"] == case["server_stack"] == "iso"
        assert case["device_model"]["crossed"] is True, (name, case["device_model"])
        assert "-m isostack.run --socket /run/isostack/isostackd.sock" in case["commands"]["client"]
        assert "-m isostack.run --socket /run/isostack/isostackd.sock" in case["commands"]["server"]
        perf = case["isoperf"]
        assert perf["bytes"] > 0 and perf["messages_per_s"] > 0
        for end, key in (("client", "isostackd"), ("server", "server_isostackd")):
            (daemon,) = case[key]
            stats = daemon["stats"]
            assert stats["apps_attached"] >= 1, (name, end, stats)
            assert stats["send_bytes"] + stats["recv_bytes"] >= perf["bytes"] / 2, (name, end, stats, perf)
            assert case["isostack_traffic"][end]["carried"] is True
        client, server = case["isostackd"][0]["stats"], case["server_isostackd"][0]["stats"]
        if case["test"] == "stream":  # both isostackds moved at least what the server received (+ warm-up)
            assert client["send_bytes"] >= perf["bytes"] and server["recv_bytes"] >= perf["bytes"], (name, perf)
        else:  # ping-pong: both sent and both received
            assert min(client["send_bytes"], client["recv_bytes"], server["send_bytes"], server["recv_bytes"]) \
                >= perf["transactions"] * 64, (name, client, server)
    assert out.returncode == 0, out.stdout[-3000:]


def test_figures_of_the_unmodified_programs(benchmark):
    cases, _out = benchmark
    iperf3, sockperf = cases["iperf3-64"]["isoperf"], cases["sockperf-64"]["isoperf"]
    assert iperf3["tool"]["tool"] == "iperf3" and iperf3["throughput_bps"] > 0
    assert iperf3["messages"] == iperf3["bytes"] // 64
    lat = sockperf["latency_us"]
    assert sockperf["transactions"] > 0
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"], lat


def test_isostack_run_in_a_guest_says_when_isostackd_is_not_running(benchmark, testbed):
    r = testbed.ssh("iso-a", "isostack-run --socket /run/isostack/none.sock iperf3 -v",  # the image's wrapper
                    check=False)
    assert r.returncode == 69, (r.stdout, r.stderr)
    assert "isostack-run: isostackd is not running: no attach socket at /run/isostack/none.sock" in r.stderr
    r = testbed.ssh("iso-a", "test -s /opt/isostack/libisostack-preload.so && ldd /opt/isostack/libisostack-preload.so",
                    check=False)
    assert r.returncode == 0 and "not found" not in r.stdout, r.stdout

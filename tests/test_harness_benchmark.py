"""A whole run through execute() with two local "guests" (loopback data path): run directory, records,
samples and report; the checks that come before anything runs."""

from __future__ import annotations

import csv
import shutil

import pytest
from harness_helpers import (
    ISO_PB,
    FakeStats,
    counters,
    free_port,
    instances_runner,
    iso_runner,
    local_runner,
    stream_playbook,
)

from testbed.harness import results, upload
from testbed.harness.benchmark import execute
from testbed.harness.errors import HarnessError
from testbed.harness.playbook import parse_playbook


def test_repeats_run_interleaved_and_the_run_records_its_order_seed_and_statistics(tmp_path):
    huge = 10**12
    stats = FakeStats([counters(k * huge, 0) for k in range(8)])
    runner = local_runner(tmp_path, stats)
    text = stream_playbook(free_port()).replace("    port:", "    repeats: 2\n    port:")
    playbook = parse_playbook("seed: 99\n" + text, "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console, "native")
    assert bad == 0
    run = results.load_run(run_json)
    assert [(c["size"], c["repeat"]) for c in run["cases"]] == [(256, 0), (1448, 0), (256, 1), (1448, 1)]
    assert run["order"]["order"] == "interleaved" and run["order"]["seed"] == 99 and run["order"]["interval_s"] == 0
    assert run["order"]["cases"][1] == "stream-local legacy size=1448 conns=1 #1"
    assert run["metadata"]["device_model_datapath"] == "native"
    assert "host_cpu_model" in run["metadata"]
    assert all("host_load" in c for c in run["cases"])
    st = run["statistics"]
    assert st["seed"] == 99 and st["confidence"] == 0.95
    assert [(c["size"], c["runs"], c["failed"]) for c in st["cases"]] == [(256, 2, 0), (1448, 2, 0)]
    assert st["cases"][0]["messages_per_s"]["ci_low"] <= st["cases"][0]["messages_per_s"]["median"]
    md = (run_json.parent / "report.md").read_text()
    assert "## Repeats: median, bootstrap 95 % interval of the median, CV" in md
    assert "run order interleaved, seed 99" in md


def test_runner_runs_every_case_and_stores_results(tmp_path):
    huge = 10**12  # the fake device model "saw" more bytes than isoperf could send in 0.3 s
    stats = FakeStats([counters(0, 0), counters(huge, 1000), counters(huge, 1000), counters(2 * huge, 2000)])
    runner = local_runner(tmp_path, stats)
    playbook = parse_playbook(stream_playbook(free_port()), "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)

    assert bad == 0
    run = results.load_run(run_json)
    assert [c["size"] for c in run["cases"]] == [256, 1448]
    for case in run["cases"]:
        assert case["status"] == "ok", case["error"]
        assert case["client"] == "iso-a" and case["server"] == "iso-b"
        r = case["isoperf"]
        assert r["verified"] is True
        assert r["server_total_bytes"] == r["client_total_bytes"] > 0
        assert case["device_model"]["crossed"] is True
        assert case["device_model"]["delta"]["a"]["from_guest_bytes"] == huge
        assert "--verify" in case["commands"]["client"]
        assert any("session from 127.0.0.1" in line for line in case["server_log"])
    assert stats.calls == 4
    assert run["playbook"]["text"] == playbook.text
    assert run["metadata"]["accel"] == "tcg"
    assert run["metadata"]["icount"] is None  # the topology was brought up without --icount
    for guest in ("iso-a", "iso-b"):  # here the host's own sysctls (LocalShell); eth0 may not exist here
        tuning = run["metadata"]["guests"][guest]["tuning"]
        assert tuning["interface"] == "eth0"
        assert tuning["sysctl"]["net.ipv4.tcp_congestion_control"], tuning
        assert tuning["offloads"] or "offloads" in tuning["error"], tuning
    packages = [upload.PackageSnapshot.read(runner.guest_root / name) for name in ("isostack", "isoperf")]
    assert run["metadata"]["guests"]["iso-a"]["package_sha256"] == upload.snapshots_hash(packages)
    assert run["ended_at"] is not None
    with open(run_json.parent / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["size"]) for r in rows] == [256, 1448]
    assert rows[0]["crossed_device_model"] == "True"
    assert "| stream-local | legacy | 256 |" in (run_json.parent / "report.md").read_text()
    # the end of the run draws its figure (legacy only: throughput against size, no ratio) and the page
    assert sorted(p.name for p in (run_json.parent / "figures").iterdir()) == [
        "stream-local-throughput-vs-size.png", "stream-local-throughput-vs-size.svg"]
    assert "data:image/png;base64," in (run_json.parent / "report.html").read_text()
    # both packages landed where the guests' PYTHONPATH points
    uploaded = tmp_path / "opt"
    for rel in ("isoperf/client.py", "isoperf/__main__.py"):
        assert (uploaded / rel).read_bytes() == (runner.guest_root / rel).read_bytes()
    assert (uploaded / "isostack" / "__init__.py").exists()


def test_runner_runs_rr_with_a_sockperf_crosscheck_and_maerts(tmp_path):
    """rr (legacy, cross-checked by a real sockperf on loopback) and maerts through the runner: the record
    holds isoperf's transactions and percentiles next to sockperf's, and the report shows both."""
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed (testbed/install-deps.sh installs it)")
    from test_harness_crosscheck import _free_port_pair  # sockperf binds port + 2 without SO_REUSEADDR

    runner = local_runner(tmp_path, None)
    port = _free_port_pair()
    text = f"""
version: 1
name: local-rr
tests:
  - name: rr-local
    test: rr
    size: 64
    response_size: 128
    duration: 1
    warmup: 0.2
    intervals: 2
    verify: true
    crosscheck: true
    port: {port}
  - name: maerts-local
    test: maerts
    size: 1000
    duration: 0.3
    warmup: 0.1
    verify: true
    port: {port}
"""
    playbook = parse_playbook(text, "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    rr, maerts = results.load_run(run_json)["cases"]
    assert rr["status"] == "ok", rr["error"]
    perf = rr["isoperf"]
    assert perf["test"] == "rr" and perf["verified"] is True and perf["response_size"] == 128
    assert perf["transactions"] > 0 and len(perf["intervals"]) == 2
    assert 0 < perf["latency_us"]["p50"] <= perf["latency_us"]["p99"] <= perf["latency_us"]["max"]
    assert "--response-size 128 --intervals 2" in rr["commands"]["client"]
    cc = rr["crosscheck"]
    assert cc["tool"] == "sockperf" and cc["error"] is None, (cc, rr["commands"])
    assert cc["transactions_per_s"] > 0 and 0 < cc["latency_us"]["p50"] <= cc["latency_us"]["p99"]
    assert f"-p {port + 2} -t 2 -m 64 --full-rtt" in rr["commands"]["sockperf"]
    assert maerts["status"] == "ok", maerts["error"]
    assert maerts["isoperf"]["test"] == "maerts" and maerts["isoperf"]["verified"] is True
    assert maerts["crosscheck"] is None
    md = (run_json.parent / "report.md").read_text()
    assert "| rr-local | legacy | 64/128 | 1 |" in md and "| ↳ sockperf | legacy | 64/128 | 1 |" in md


def test_execute_checks_the_native_parts_before_uploading_for_stack_iso(tmp_path, monkeypatch):
    runner, _client = iso_runner(tmp_path)
    calls = []
    monkeypatch.setattr(runner, "check_native", lambda: calls.append("check native"))
    monkeypatch.setattr(runner, "prepare", lambda guests: calls.append("prepare") or {})
    execute(runner, parse_playbook(ISO_PB), tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    assert calls == ["check native", "prepare"]


def test_a_server_on_isostack_also_needs_the_native_parts(tmp_path, monkeypatch):
    runner, _client = iso_runner(tmp_path)
    calls = []
    monkeypatch.setattr(runner, "check_native", lambda: calls.append("check native"))
    monkeypatch.setattr(runner, "prepare", lambda guests: calls.append("prepare") or {})
    pb = parse_playbook(ISO_PB.replace("stack: iso", "stack: legacy\n    server_stack: iso"), "pb.yaml")
    execute(runner, pb, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    assert calls == ["check native", "prepare"]


@pytest.mark.parametrize("vcpus, queues", [(2, 2), (3, 1), (2, 1)])
def test_a_testbed_too_small_for_the_instances_is_refused_before_the_run(tmp_path, vcpus, queues):
    runner, client, _server = instances_runner(tmp_path, vcpus=vcpus, queues=queues)
    pb = parse_playbook(ISO_PB + "    instances: [1, 2]\n", "pb.yaml")
    with pytest.raises(HarnessError) as exc:
        execute(runner, pb, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    msg = str(exc.value)
    assert msg.startswith("pb.yaml:11: tests[0] (stream-iso): instances 2 on iso-a: 2 isostackd instance(s) need"
                          " 3 vCPUs (vCPU 0 for the client, one per instance) and 2 NIC queue pair(s)")
    assert f"the guest has {vcpus} vCPU(s) and {queues} queue pair(s)" in msg
    assert "bring the testbed up with `testbed up --vcpus 3 --queues 2`" in msg
    assert client.commands == []  # nothing ran, nothing was built or uploaded
    assert not (tmp_path / "results").exists()

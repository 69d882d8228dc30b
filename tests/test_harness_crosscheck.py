"""Cross-check tools (iperf3, sockperf): command lines and parsers on canned output, then real runs on
loopback through the runner (both tools are installed on the host by install-deps.sh, as in the guests)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from testbed.harness import crosscheck
from testbed.harness.crosscheck import CrosscheckError
from testbed.harness.playbook import parse_playbook

FIXTURES = Path(__file__).parent / "fixtures" / "crosscheck"

PB = """\
version: 1
name: x
tests:
  - name: t
    test: {test}
    size: {size}
    connections: {conns}
    stack: [legacy, iso]
    duration: 2.5
    warmup: 1.5
    crosscheck: {cc}
    port: {port}
"""


def _cases(test="stream", size=1448, conns=2, cc="true", port=5710):
    return parse_playbook(PB.format(test=test, size=size, conns=conns, cc=cc, port=port)).cases()


def _free_port_pair() -> int:
    """A port p with p+1 and p+2 free on 127.0.0.1 (the tools' ports)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p > 65000:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p + 1))
                b.bind(("127.0.0.1", p + 2))
            return p
        except OSError:
            continue
    raise AssertionError("no free ports")


def test_only_legacy_cases_that_asked_are_cross_checked():
    legacy, iso = _cases()
    assert (legacy.stack, crosscheck.tool(legacy)) == ("legacy", "iperf3")
    assert crosscheck.tool(iso) is None
    assert crosscheck.tool(_cases(test="rr", conns=1)[0]) == "sockperf"
    assert crosscheck.tool(_cases(cc="false")[0]) is None


def test_sockperf_skips_what_it_cannot_do():
    assert crosscheck.skip_reason(_cases(test="rr", conns=4)[0]) == "sockperf ping-pong runs one connection"
    assert crosscheck.skip_reason(_cases(test="rr", size=8, conns=1)[0]) == "sockperf messages are at least 14 bytes"
    assert crosscheck.skip_reason(_cases(test="rr", size=64, conns=1)[0]) is None


def test_commands():
    stream = _cases()[0]
    assert crosscheck.client_command(stream, "10.10.0.2") == (
        "iperf3 -c 10.10.0.2 -p 5711 -t 3 -O 2 -P 2 -l 1448 -J"
    )
    rr = _cases(test="rr", size=64, conns=1)[0]
    assert crosscheck.client_command(rr, "10.10.0.2") == (
        "sockperf ping-pong --tcp -i 10.10.0.2 -p 5712 -t 3 -m 64 --full-rtt"
    )
    start = crosscheck.server_start_command("iperf3", "10.10.0.2", 5711)
    assert "nohup iperf3 -s -1 -B 10.10.0.2 -p 5711 > /tmp/iperf3-server-5711.log" in start
    assert start.endswith("& echo $!")
    assert "sockperf server --tcp -i 10.10.0.2 -p 5711" in crosscheck.server_start_command("sockperf", "10.10.0.2",
                                                                                            5711)
    assert "sport = :5711" in crosscheck.server_ready_command(5711, 42)
    assert crosscheck.client_timeout(stream) >= 2 + 2.5


def test_parse_iperf3_json():
    r = crosscheck.parse("iperf3", 0, (FIXTURES / "iperf3-P2.json").read_text(), "")
    assert r == {
        "tool": "iperf3",
        "throughput_bps": 4215437196.6,
        "sender_bps": 4244065282.8,
        "bytes": 528986256,
        "sender_bytes": 530518240,
        "duration": 1.004,
        "retransmits": 7,
    }


def test_parse_iperf3_errors():
    with pytest.raises(CrosscheckError, match="iperf3: unable to connect to server: Connection refused"):
        crosscheck.parse_iperf3(json.dumps({"start": {}, "end": {}, "error": "unable to connect to server: "
                                                                               "Connection refused"}))
    with pytest.raises(CrosscheckError, match="iperf3 printed no JSON: sh: iperf3: not found"):
        crosscheck.parse_iperf3("sh: iperf3: not found\n")
    with pytest.raises(CrosscheckError, match="iperf3 JSON lacks 'sum_received'"):
        crosscheck.parse_iperf3(json.dumps({"end": {}}))


def test_parse_sockperf_full_rtt():
    r = crosscheck.parse("sockperf", 0, (FIXTURES / "sockperf-ping-pong-full-rtt.txt").read_text(), "")
    assert r == {
        "tool": "sockperf",
        "duration": 1.55,
        "transactions": 107841,
        "transactions_per_s": round(107841 / 1.55, 1),
        "latency_us": {"p50": 13.906, "p90": 14.763, "p99": 21.929, "p99.9": 42.83, "max": 506.162, "min": 5.979,
                       "mean": 14.322, "samples": 107841},
    }


def test_parse_sockperf_refuses_one_way_latency_and_garbage():
    with pytest.raises(CrosscheckError, match="one-way latency; run it with --full-rtt"):
        crosscheck.parse_sockperf((FIXTURES / "sockperf-ping-pong-one-way.txt").read_text())
    with pytest.raises(CrosscheckError, match="sockperf printed no results: sockperf: ERROR: connect"):
        crosscheck.parse_sockperf("sockperf: ERROR: connect\n")
    text = (FIXTURES / "sockperf-ping-pong-full-rtt.txt").read_text()
    with pytest.raises(CrosscheckError, match="lacks the 50/90/99/99.9 percentiles"):
        crosscheck.parse_sockperf(text.replace("percentile 99.900", "percentile 99.800"))
    with pytest.raises(CrosscheckError, match="sockperf exited 1"):
        crosscheck.parse("sockperf", 1, text, "")


@pytest.mark.parametrize("test,size,conns", [("stream", 1448, 2), ("rr", 64, 1)])
def test_real_tools_on_loopback(test, size, conns):
    """The commands run as the runner runs them (a shell), against the real tools on 127.0.0.1."""
    import subprocess
    import time

    name = "iperf3" if test == "stream" else "sockperf"
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (testbed/install-deps.sh installs it)")
    case = _cases(test=test, size=size, conns=conns, port=_free_port_pair())[0]
    port = crosscheck.port(case)
    pid = int(subprocess.run(["sh", "-c", crosscheck.server_start_command(name, "127.0.0.1", port)],
                             capture_output=True, text=True, timeout=10).stdout.split()[-1])
    try:
        deadline = time.monotonic() + 10
        while (code := subprocess.run(["sh", "-c", crosscheck.server_ready_command(port, pid)]).returncode) != 0:
            assert code == 1 and time.monotonic() < deadline, f"{name} server did not start"
            time.sleep(0.1)
        cmd = crosscheck.client_command(case, "127.0.0.1")
        r = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=crosscheck.client_timeout(case))
        result = crosscheck.parse(name, r.returncode, r.stdout, r.stderr)
    finally:
        subprocess.run(["sh", "-c", crosscheck.server_stop_command(pid)], timeout=10)
    if name == "iperf3":
        assert result["throughput_bps"] > 1e6 and result["duration"] == pytest.approx(3, abs=0.5)
    else:
        lat = result["latency_us"]
        assert result["transactions_per_s"] > 100
        assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]

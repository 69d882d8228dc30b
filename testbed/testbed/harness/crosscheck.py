"""Cross-checks of isoperf's legacy-stack figures with the standard tools, between the same two guests.

STREAM against iperf3 (throughput the receiver saw), RR against sockperf ping-pong (TCP, one connection,
full round-trip times: isoperf's RR latency is the whole request/response too). Command lines and the
parse of the tools' output only, apart from any I/O (tested on canned output, as Flent does); the runner
runs them.
"""

from __future__ import annotations

import json
import math
import re
import shlex

from testbed.harness.playbook import CROSSCHECK_TOOLS, Case

# The tool's server listens on the isoperf port + this: one port per tool, because sockperf's server does not
# set SO_REUSEADDR and cannot bind a port an iperf3 connection left in TIME_WAIT.
PORT_OFFSET = {"iperf3": 1, "sockperf": 2}
LOG_DIR = "/tmp"


class CrosscheckError(RuntimeError):
    pass


def tool(case: Case) -> str | None:
    """The tool that cross-checks this case, or None (not asked for, not legacy, or no tool for the test)."""
    if not case.spec.crosscheck or case.stack != "legacy" or case.server_stack != "legacy":
        return None
    return CROSSCHECK_TOOLS.get(case.spec.test)


def skip_reason(case: Case) -> str | None:
    if tool(case) == "sockperf" and case.connections != 1:
        return "sockperf ping-pong runs one connection"
    if tool(case) == "sockperf" and case.size < 14:
        return "sockperf messages are at least 14 bytes"
    return None


def port(case: Case) -> int:
    return case.spec.port + PORT_OFFSET[tool(case)]


def log_path(name: str, p: int) -> str:
    return f"{LOG_DIR}/{name}-server-{p}.log"


def server_start_command(name: str, bind: str, p: int) -> str:
    """Start the tool's server detached from the SSH session; prints its PID."""
    log = shlex.quote(log_path(name, p))
    if name == "iperf3":
        argv = f"iperf3 -s -1 -B {shlex.quote(bind)} -p {p}"
    elif name == "sockperf":
        argv = f"sockperf server --tcp -i {shlex.quote(bind)} -p {p}"
    else:
        raise ValueError(f"unknown tool {name!r}")
    return f"rm -f {log}; nohup {argv} > {log} 2>&1 < /dev/null & echo $!"


def server_ready_command(p: int, pid: int) -> str:
    """Exit 0 once something listens on TCP port p, 3 if the server died, 1 if not yet."""
    return f"ss -Hltn 'sport = :{p}' | grep -q . && exit 0; kill -0 {pid} 2>/dev/null || exit 3; exit 1"


def server_stop_command(pid: int) -> str:
    return f"kill {pid} 2>/dev/null; for i in $(seq 20); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done;" \
           f" kill -9 {pid} 2>/dev/null; true"


def client_command(case: Case, server_ip: str) -> str:
    name = tool(case)
    spec, p = case.spec, port(case)
    seconds = max(1, math.ceil(spec.duration * spec.intervals))  # both tools take whole seconds
    ip = shlex.quote(server_ip)
    if name == "iperf3":
        omit = math.ceil(spec.warmup)
        return f"iperf3 -c {ip} -p {p} -t {seconds} -O {omit} -P {case.connections} -l {case.size} -J"
    if name == "sockperf":
        return f"sockperf ping-pong --tcp -i {ip} -p {p} -t {seconds} -m {case.size} --full-rtt"
    raise ValueError(f"no cross-check tool for {case.label}")


def client_timeout(case: Case) -> float:
    return math.ceil(case.spec.warmup) + case.spec.duration * case.spec.intervals + 60.0


def parse_iperf3(text: str) -> dict:
    """iperf3 -J: throughput the receiver saw (omitted warm-up seconds excluded)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CrosscheckError(f"iperf3 printed no JSON: {_tail(text)}") from None
    if data.get("error"):
        raise CrosscheckError(f"iperf3: {data['error']}")
    try:
        received = data["end"]["sum_received"]
        sent = data["end"]["sum_sent"]
        return {
            "tool": "iperf3",
            "throughput_bps": round(float(received["bits_per_second"]), 1),
            "sender_bps": round(float(sent["bits_per_second"]), 1),
            "bytes": int(received["bytes"]),
            "sender_bytes": int(sent["bytes"]),
            "duration": round(float(received["seconds"]), 3),
            "retransmits": sent.get("retransmits"),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CrosscheckError(f"iperf3 JSON lacks {e}") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VALID = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)")
_AVG = re.compile(r"avg-(?:rtt|lat)=([\d.]+)")
_PCT = re.compile(r"---> percentile ([\d.]+) =\s*([\d.]+)")
_MAX = re.compile(r"---> <MAX> observation =\s*([\d.]+)")
_MIN = re.compile(r"---> <MIN> observation =\s*([\d.]+)")
_SOCKPERF_PCT = {"50.000": "p50", "90.000": "p90", "99.000": "p99", "99.900": "p99.9"}


def parse_sockperf(text: str) -> dict:
    """sockperf ping-pong --full-rtt: transactions/s over its valid duration and round-trip percentiles (µs)."""
    text = _ANSI.sub("", text)
    if "avg-rtt" not in text:
        if "avg-lat" in text:
            raise CrosscheckError("sockperf reported one-way latency; run it with --full-rtt")
        raise CrosscheckError(f"sockperf printed no results: {_tail(text)}")
    valid, avg = _VALID.search(text), _AVG.search(text)
    if not valid or not avg:
        raise CrosscheckError(f"sockperf output without its valid-duration line: {_tail(text)}")
    runtime, received = float(valid.group(1)), int(valid.group(3))
    latency = {"p50": None, "p90": None, "p99": None, "p99.9": None}
    for pct, value in _PCT.findall(text):
        if pct in _SOCKPERF_PCT:
            latency[_SOCKPERF_PCT[pct]] = float(value)
    if None in latency.values():
        raise CrosscheckError("sockperf output lacks the 50/90/99/99.9 percentiles")
    mx, mn = _MAX.search(text), _MIN.search(text)
    latency["max"] = float(mx.group(1)) if mx else None
    latency["min"] = float(mn.group(1)) if mn else None
    latency["mean"] = float(avg.group(1))
    latency["samples"] = received
    return {
        "tool": "sockperf",
        "duration": runtime,
        "transactions": received,
        "transactions_per_s": round(received / runtime, 1) if runtime > 0 else 0.0,
        "latency_us": latency,
    }


def parse(name: str, exit_code: int, stdout: str, stderr: str) -> dict:
    if name == "iperf3":
        result = parse_iperf3(stdout)
    else:
        result = parse_sockperf(stdout + "\n" + stderr)
    if exit_code != 0:
        raise CrosscheckError(f"{name} exited {exit_code}: {_tail(stderr or stdout)}")
    return result


def _tail(text: str) -> str:
    lines = [ln for ln in _ANSI.sub("", text).strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) or "no output"

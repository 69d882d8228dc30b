"""A case's program other than isoperf (the playbook's `program`): iperf3 for STREAM, sockperf ping-pong for RR,
Debian's unmodified binaries, on kernel sockets or over IsoStack through isostack-run (the preload shim).

Command lines and the parse of the tools' output into the fields isoperf reports (bytes, messages/s, bit/s,
transactions/s, latency percentiles), so the report sets them side by side with isoperf's; apart from any
I/O (tested on captured output), like isoperf_cmd. The parse of each tool is crosscheck's.
"""

from __future__ import annotations

import json
import math
import shlex

from testbed.harness import crosscheck
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.isostackd_cmd import SOCKET
from testbed.harness.playbook import Case

# One port per tool beside isoperf's (crosscheck's): sockperf's server sets no SO_REUSEADDR, so it cannot bind
# a port another tool's connection left in TIME_WAIT.
PORT_OFFSET = crosscheck.PORT_OFFSET


class ProgramOutputError(RuntimeError):
    pass


def port(case: Case) -> int:
    return case.spec.port + PORT_OFFSET[case.program]


def preloaded(layout: GuestLayout, argv: str, iso: bool) -> str:
    """`argv` as is on kernel sockets, or under isostack-run (which finds isostackd at SOCKET, says so and exits
    69 when it is not running) for an IsoStack end."""
    return f"{layout.isostack_run(SOCKET)} {argv}" if iso else argv


def server_log(layout: GuestLayout, case: Case) -> str:
    return f"{layout.log_dir}/{case.program}-server-{port(case)}.log"


def server_start_command(layout: GuestLayout, case: Case, bind: str) -> str:
    """Start the program's server detached from the SSH session; prints its PID. iperf3 serves one test (-1)."""
    p, log = port(case), shlex.quote(server_log(layout, case))
    if case.program == "iperf3":
        argv = f"iperf3 -s -1 -B {shlex.quote(bind)} -p {p}"
    elif case.program == "sockperf":
        argv = f"sockperf server --tcp -i {shlex.quote(bind)} -p {p}"
    else:
        raise ValueError(f"no server command for program {case.program!r}")
    argv = preloaded(layout, argv, case.server_stack == "iso")
    return f"rm -f {log}; nohup env {argv} > {log} 2>&1 < /dev/null & echo $!"


def server_ready_command(case: Case, pid: int) -> str:
    """Exit 0 once something listens on the program's port (the kernel's listener, or isostackd's for an
    IsoStack server), 3 if the server died, 1 if not yet."""
    return crosscheck.server_ready_command(port(case), pid)


def server_stop_command(pid: int) -> str:
    return crosscheck.server_stop_command(pid)


def seconds(case: Case) -> int:
    """Both tools take whole seconds: the measured time, rounded up."""
    return max(1, math.ceil(case.spec.duration * case.spec.intervals))


def client_command(layout: GuestLayout, case: Case, server_ip: str) -> str:
    """The client's command line (VAR=value assignments first when preloaded, as pinning.pinned expects)."""
    ip, p = shlex.quote(server_ip), port(case)
    if case.program == "iperf3":
        argv = (f"iperf3 -c {ip} -p {p} -t {seconds(case)} -O {math.ceil(case.spec.warmup)} -P {case.connections}"
                f" -l {case.size} -J")
    elif case.program == "sockperf":
        argv = f"sockperf ping-pong --tcp -i {ip} -p {p} -t {seconds(case)} -m {case.size} --full-rtt"
    else:
        raise ValueError(f"no client command for program {case.program!r}")
    return preloaded(layout, argv, case.stack == "iso")


def client_timeout(case: Case) -> float:
    return crosscheck.client_timeout(case) + 30.0


def parse_client_output(case: Case, exit_code: int, stdout: str, stderr: str) -> dict:
    """The tool's figures under isoperf's keys (test, size, connections, duration, bytes, messages,
    throughput_bps, messages_per_s, cpu, verified, errors; rr adds transactions, transactions_per_s and
    latency_us), with `program` and the tool's own parse under `tool`; ProgramOutputError when there are none.

    iperf3: bytes, messages (of -l bytes) and bit/s are the receiver's, as isoperf counts a stream at its server
    (the sender's count, `sender_bytes`, also holds what sat in the buffers when the test ended: at 64-byte
    writes on a slow guest, twice the received bytes). sockperf: the valid duration's round trips, one request
    and one reply each.
    """
    warnings: list[str] = []
    if case.program == "iperf3":
        stdout, warnings = iperf3_without_option_warnings(stdout)
    try:
        tool = crosscheck.parse(case.program, exit_code, stdout, stderr)
    except crosscheck.CrosscheckError as e:
        said = " | ".join(ln for ln in stderr.strip().splitlines()[-3:] if ln.strip())
        raise ProgramOutputError(f"{case.program} client (exit {exit_code}): {e}"
                                 + (f" (stderr: {said})" if said and said not in str(e) else "")) from None
    if warnings:
        # TCP_INFO is what iperf3 counts retransmits from; the shim does not answer it (docs/preload.md)
        tool = {**tool, "warnings": warnings, "retransmits": None}
    base = {"program": case.program, "test": case.spec.test, "stack": case.stack, "size": case.size,
            "connections": case.connections, "cpu": {"client": {}, "server": {}}, "verified": None, "errors": [],
            "tool": tool}
    if case.program == "iperf3":
        duration, received = tool["duration"], tool["bytes"]
        messages = received // case.size
        return {**base, "duration": duration, "bytes": received, "messages": messages,
                "throughput_bps": tool["throughput_bps"], "sender_bytes": tool["sender_bytes"],
                "messages_per_s": round(messages / duration, 1) if duration > 0 else 0.0}
    transactions, duration = tool["transactions"], tool["duration"]
    return {**base, "duration": duration, "bytes": transactions * 2 * case.size, "messages": transactions,
            "transactions": transactions, "transactions_per_s": tool["transactions_per_s"],
            "messages_per_s": tool["transactions_per_s"],
            "throughput_bps": round(transactions * 2 * case.size * 8 / duration, 1) if duration > 0 else 0.0,
            "latency_us": tool["latency_us"]}



# iperf3 reads TCP_INFO and TCP_CONGESTION after the test; the shim answers ENOPROTOOPT (it cannot answer them
# honestly, docs/preload.md), and iperf3 -J then adds one "error" key per failed getsockopt to a complete result.
OPTION_WARNING = "getsockopt - Protocol not available"


def iperf3_without_option_warnings(text: str) -> tuple[str, list[str]]:
    """iperf3 -J output without its getsockopt warnings, and the warnings; unchanged when it has no complete
    result or another error (that one stays an error)."""
    errors: list[str] = []

    def pairs(items: list) -> dict:
        out = {}
        for key, value in items:
            if key == "error":
                errors.append(value)
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except (json.JSONDecodeError, RecursionError):
        return text, []
    end = data.get("end") if isinstance(data, dict) else None
    complete = isinstance(end, dict) and "sum_sent" in end and "sum_received" in end
    if not errors or not complete or any(e != OPTION_WARNING for e in errors):
        return text, []
    data.pop("error", None)
    return json.dumps(data), errors

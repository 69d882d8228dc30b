"""The `isoperf` command: options, the human-readable result, exit codes.

Usage::

    isoperf server [-B|--bind ADDR] [-p|--port 5701] [--data-bind ADDR] [--stack legacy|iso] [-1|--once]
    isoperf client -H|--host H [-p|--port 5701] [--control-host C] [--control-port P]
                   [--test stream|maerts|rr|crr] [-m|--size 1448] [--response-size S]
                   [-l|-t|--duration 10] [-O|--warmup 1] [--intervals 1] [-P|--connections 1] [--stack legacy|iso]
                   [-A|--cpu N] [--verify] [--send-loop auto|c|python] [--sndbuf BYTES] [-J|--json]

The short flags are the ones netperf and iperf3 users type, each meaning what it means there: -H host and
-l duration (netperf), -t duration, -P parallel connections, -O omitted warm-up seconds, -A CPU affinity,
-J JSON, -B bind address, -1 one session (iperf3), -p port (both), -m send size (netperf's test option).
Not taken: netperf's -t (the test: --test) and iperf3's -l (a buffer length: --size).

Client output (``--json``): test, stack, size, response_size, connections, duration (the measured interval,
s), requested_duration, warmup, interval_count, bytes (payload carried in that interval: received by the server for
stream, by the client for maerts, requests + responses for rr/crr), messages (stream/maerts: bytes // size;
rr/crr: transactions), throughput_bps, messages_per_s, cpu {"client": {"all": %, "cpu0": %, ...},
"server": {...}} (busy % from /proc/stat over the measured intervals, warm-up excluded), send_loop (stream:
"c" or "python", the loop around the per-message sendall calls; null for the other tests), sndbuf (--sndbuf or
null), verified (null without --verify), errors (a non-empty list means exit 1), client_sent_bytes,
client_total_bytes, server_total_bytes (whole run incl. warm-up, the sender's and the receiver's count; they
must be equal); rr/crr add transactions, transactions_per_s, latency_us {p50, p90, p99, p99.9, max, min,
mean, samples} and latency_histogram {buckets_per_decade, first_us, counts} (log buckets); intervals (one
entry per measured interval, the same figures) and summary {figure: {mean, stddev}} over them. The top-level
figures cover all K intervals together (they are back to back).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import client, sendloop, server
from .cpu import check_cpu
from .errors import IsoperfError
from .protocol import DEFAULT_PORT, KNOWN_STACKS, MAX_INTERVALS, TESTS, RunParams


def format_human(r: dict) -> str:
    cpu_c = r["cpu"]["client"].get("all", 0.0)
    cpu_s = r["cpu"]["server"].get("all", 0.0)
    size = f"size={r['size']}"
    if r.get("response_size") not in (None, r["size"]):
        size += f"/{r['response_size']}"
    lines = [f"{r['test'].upper()} {size} conns={r['connections']} stack={r['stack']} intervals={r['interval_count']}"]
    if "transactions" in r:
        lat = r["latency_us"]
        lines.append(
            f"  {r['transactions']} transactions in {r['duration']:.3f} s = {r['transactions_per_s']:.0f} trans/s, "
            f"{r['throughput_bps'] / 1e9:.3f} Gb/s"
        )
        if lat["samples"]:
            lines.append(
                "  latency us: " + "  ".join(f"{k} {lat[k]:.1f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            )
    else:
        lines.append(
            f"  {r['bytes']} bytes in {r['duration']:.3f} s = {r['throughput_bps'] / 1e9:.3f} Gb/s, "
            f"{r['messages_per_s']:.0f} msgs/s"
        )
    if r["interval_count"] > 1:
        s = r["summary"]["throughput_bps"]
        lines.append(f"  per interval: {s['mean'] / 1e9:.3f} +- {s['stddev'] / 1e9:.3f} Gb/s")
        if "transactions_per_s" in r["summary"]:
            t = r["summary"]["transactions_per_s"]
            lines.append(f"  per interval: {t['mean']:.0f} +- {t['stddev']:.0f} trans/s")
    lines += [
        f"  cpu busy: client {cpu_c:.1f}%  server {cpu_s:.1f}%",
        f"  verified: {r['verified']}",
    ]
    lines += [f"  error: {e}" for e in r["errors"]]
    return "\n".join(lines)


SHORT_FLAGS = ("short flags as netperf and iperf3 users type them: -H host, -l duration (netperf); -t duration, "
               "-P connections, -O warm-up, -A CPU, -J JSON, -B bind, -1 one session (iperf3); -p port; -m size "
               "(netperf's send size)")


class _Parser(argparse.ArgumentParser):
    """Bad options: one line on stderr and exit 2 (no usage block, no traceback)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="isoperf", description="netperf-style load generator for IsoStack")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server", help="answer isoperf clients", epilog=SHORT_FLAGS)
    s.add_argument("-B", "--bind", default="0.0.0.0", help="address the control port listens on (default 0.0.0.0)")
    s.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT, help=f"control port (default {DEFAULT_PORT})")
    s.add_argument("--data-bind", default=None,
                   help="address the data connections' listener binds to (default: --bind); with a control "
                        "connection on a management network, the data address under test")
    s.add_argument("-1", "--once", action="store_true", help="exit after one session")
    s.add_argument("--stack", choices=KNOWN_STACKS, default="legacy",
                   help="the server's network stack for the data connections: legacy (kernel sockets) or iso "
                        "(IsoStack: listen, accept, receive and answer through isostackd, found by $ISOSTACK_SOCKET "
                        "like the client's); the control connection is a kernel socket (default legacy)")
    c = sub.add_parser("client", help="run a test against an isoperf server", epilog=SHORT_FLAGS)
    c.add_argument("-H", "--host", required=True, help="server address: the data connections go there")
    c.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT, help=f"control port (default {DEFAULT_PORT})")
    c.add_argument("--control-host", default=None,
                   help="address of the server's control port, when the control connection must not ride the "
                        "link under test (a management network); default: --host")
    c.add_argument("--control-port", type=_port, default=None,
                   help="the control port at --control-host, e.g. a forwarded one (default: --port)")
    c.add_argument("--test", choices=TESTS, default="stream",
                   help="stream (send), maerts (receive), rr (request/response), crr (connect/request/response/"
                        "close); default stream")
    c.add_argument("--stack", choices=KNOWN_STACKS, default="legacy", help="network stack (default legacy)")
    c.add_argument("-m", "--size", type=_positive_int, default=1448,
                   help="message size in bytes; rr/crr: the request (default 1448)")
    c.add_argument("--response-size", type=_positive_int, default=None,
                   help="rr/crr: response size in bytes (default: --size)")
    c.add_argument("-l", "-t", "--duration", type=_positive_float, default=10.0, help="measured seconds (default 10)")
    c.add_argument("-O", "--warmup", type=_nonneg_float, default=1.0, help="seconds before measuring (default 1)")
    c.add_argument("--intervals", type=_positive_int, default=1,
                   help=f"measured intervals, back to back, each reported (default 1, at most {MAX_INTERVALS})")
    # one word, one meaning: "repeats" are whole runs (playbooks, vhea bench); the old flag says where it went
    c.add_argument("--repeats", type=_moved("--intervals"), help=argparse.SUPPRESS)
    c.add_argument("-P", "--connections", type=_positive_int, default=1, help="parallel connections (default 1)")
    c.add_argument("-A", "--cpu", type=_nonneg_int, default=None, help="pin the worker threads to this CPU")
    c.add_argument("--verify", action="store_true", help="check every byte (seq + pattern + crc32)")
    c.add_argument("--send-loop", choices=sendloop.SEND_LOOPS, default="auto",
                   help="stream without --verify: the loop around the per-message sendall calls, in C as netperf's "
                        "(isoperf's _sendloop extension) or in Python; auto: C where it is built (default). The "
                        "result says which ran (send_loop)")
    c.add_argument("--sndbuf", type=_positive_int, default=None,
                   help="SO_SNDBUF of the data sockets in bytes (netperf's -s; the kernel doubles it): bounds what a "
                        "connection has in flight (default: the kernel's autotuning)")
    c.add_argument("-J", "--json", action="store_true", help="print the result as JSON")
    c.add_argument("--connect-timeout", type=_positive_float, default=5.0, help=argparse.SUPPRESS)
    return p


def _moved(new: str):
    """An argparse type for a flag that was renamed: its use is an error that names the new flag."""
    def refuse(text: str):
        raise argparse.ArgumentTypeError(f"renamed: use {new} (repeats are whole runs, a playbook's `repeats`)")
    return refuse


def _positive_int(text: str) -> int:
    v = _nonneg_int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def _port(text: str) -> int:
    v = _positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def _positive_float(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    v = _float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "server":
            return server.run_server(args.bind, args.port, args.once, data_bind=args.data_bind, stack=args.stack)
        params = RunParams(
            test=args.test,
            stack=args.stack,
            size=args.size,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            verify=args.verify,
            response_size=args.response_size,
            intervals=args.intervals,
        )
        try:  # option values that are wrong together: a usage error like any other bad option
            params.check()
            if args.cpu is not None:
                check_cpu(args.cpu)
            sendloop.resolve(args.send_loop)
        except IsoperfError as e:
            parser.exit(2, f"isoperf client: error: {e}\n")
        control = (args.control_host or args.host, args.control_port or args.port)
        result = client.run_client(args.host, args.port, params, connect_timeout=args.connect_timeout, cpu=args.cpu,
                                   send_loop=args.send_loop, sndbuf=args.sndbuf, control=control)
    except (IsoperfError, OSError) as e:  # OSError: a data or control connection broke mid-session
        print(f"isoperf: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("isoperf: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_human(result))
    if result["errors"]:
        if not args.json:
            print(f"isoperf: error: {len(result['errors'])} error(s), see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

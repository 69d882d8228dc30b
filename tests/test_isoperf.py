"""isoperf on loopback: a real server thread and a real client, short durations."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isostack import isoperf
from isostack.isoperf import IsoperfError, RunParams
from testbed.harness.isoperf_cmd import REQUIRED_KEYS

GUEST_SRC = Path(__file__).resolve().parents[1] / "isostack-guest"

PROC_STAT_BEFORE = """\
cpu  100 0 50 800 50 0 0 0 0 0
cpu0 60 0 20 400 20 0 0 0 0 0
cpu1 40 0 30 400 30 0 0 0 10 0
intr 12345 0 0
ctxt 999
btime 1700000000
processes 10
"""
PROC_STAT_AFTER = """\
cpu  250 0 100 1000 50 0 0 0 0 0
cpu0 160 0 40 450 20 0 0 0 0 0
cpu1 90 0 60 550 30 0 0 0 10 0
intr 22345 0 0
"""


class ServerThread:
    """An isoperf server serving exactly one session in a thread of the test process."""

    def __init__(self, corrupt_byte: int | None = None):
        self.port: int | None = None
        self.status: int | None = None
        bound = threading.Event()

        def ready(port: int) -> None:
            self.port = port
            bound.set()

        def run() -> None:
            self.status = isoperf.run_server("127.0.0.1", 0, once=True, ready=ready, _corrupt_byte=corrupt_byte)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert bound.wait(5), "server did not start"

    def join(self) -> int | None:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ /proc/stat


def test_parse_proc_stat_reads_every_cpu_line():
    cpus = isoperf.parse_proc_stat(PROC_STAT_BEFORE)
    assert set(cpus) == {"all", "cpu0", "cpu1"}
    # total excludes guest/guest_nice (already in user): 60+20+400+20 = 500
    assert cpus["cpu0"] == isoperf.CpuTimes(busy=80, total=500)
    assert cpus["cpu1"] == isoperf.CpuTimes(busy=70, total=500)


def test_cpu_busy_percent_over_interval():
    before = isoperf.parse_proc_stat(PROC_STAT_BEFORE)
    after = isoperf.parse_proc_stat(PROC_STAT_AFTER)
    busy = isoperf.cpu_busy_percent(before, after)
    # cpu0: busy +120 of total +170; cpu1: busy +80 of +230; all: +200 of +400
    assert busy == {"all": 50.0, "cpu0": round(100 * 120 / 170, 2), "cpu1": round(100 * 80 / 230, 2)}


def test_cpu_busy_percent_idle_interval_is_zero():
    before = isoperf.parse_proc_stat(PROC_STAT_BEFORE)
    assert isoperf.cpu_busy_percent(before, before)["cpu0"] == 0.0


def test_parse_proc_stat_rejects_text_without_cpu_lines():
    with pytest.raises(ValueError):
        isoperf.parse_proc_stat("intr 1 2 3\n")


def test_read_proc_stat_on_this_host():
    cpus = isoperf.read_proc_stat()
    assert "all" in cpus and "cpu0" in cpus


# ------------------------------------------------------------ payload verification


def _stream(size: int, count: int, conn: int = 0) -> bytes:
    maker = isoperf.MessageMaker(conn, size)
    return b"".join(maker.message(i) for i in range(count))


def test_verifier_accepts_a_good_stream_in_odd_chunks():
    data = _stream(40, 50)
    v = isoperf.StreamVerifier(0, 40)
    for i in range(0, len(data), 7):
        v.feed(data[i : i + 7])
    v.finish()
    assert v.errors == []
    assert v.next_seq == 50


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(min_value=0, max_value=5 * 40 - 1), bit=st.integers(min_value=0, max_value=7))
def test_verifier_catches_any_single_flipped_bit(offset, bit):
    data = bytearray(_stream(40, 5))
    data[offset] ^= 1 << bit
    v = isoperf.StreamVerifier(0, 40)
    v.feed(bytes(data))
    v.finish()
    assert len(v.errors) >= 1
    assert f"message {offset // 40} " in v.errors[0]


def test_verifier_catches_other_connections_stream():
    v = isoperf.StreamVerifier(0, 40)
    v.feed(_stream(40, 3, conn=1))
    assert v.errors and "payload differs" in v.errors[0]


def test_verifier_reports_truncated_stream():
    v = isoperf.StreamVerifier(0, 40)
    v.feed(_stream(40, 2)[:-3])
    v.finish()
    assert v.errors == ["connection 0: stream ended inside a message (37 stray bytes)"]


# ------------------------------------------------------------ client + server on loopback


def test_stream_counts_every_byte_sent():
    server = ServerThread()
    params = RunParams(size=1448, connections=1, duration=0.5, warmup=0.2)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert 0 < r["bytes"] <= r["server_total_bytes"]
    assert r["duration"] == pytest.approx(0.5, abs=0.25)
    assert r["throughput_bps"] == pytest.approx(r["bytes"] * 8 / r["duration"], rel=1e-3)
    assert r["messages"] == r["bytes"] // 1448
    assert r["verified"] is None
    assert "all" in r["cpu"]["client"] and "all" in r["cpu"]["server"]


def test_stream_with_verify_and_several_connections():
    server = ServerThread()
    params = RunParams(size=100, connections=3, duration=0.4, warmup=0.1, verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["verified"] is True
    assert r["server_total_bytes"] == r["client_total_bytes"]
    assert r["server_total_bytes"] % 100 == 0


def test_one_corrupted_byte_fails_the_run():
    server = ServerThread()
    params = RunParams(size=1000, connections=2, duration=0.3, warmup=0.1, verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params, _corrupt_byte=3500)
    assert server.join() == 1
    assert r["verified"] is False
    assert len(r["errors"]) == 1
    assert r["errors"][0].startswith("connection 0 message 3 ")


def test_cli_json_output_and_exit_code(capsys):
    server = ServerThread()
    rc = isoperf.main(
        [
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--size",
            "64",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--verify",
            "--json",
        ]
    )
    server.join()
    text = capsys.readouterr().out  # the server thread prints its log lines to the same stdout
    out = json.loads(text[text.index("{\n") : text.rindex("\n}") + 2])
    assert rc == 0
    for key in REQUIRED_KEYS:  # what the harness reads from isoperf's JSON
        assert key in out
    assert out["test"] == "stream" and out["size"] == 64 and out["verified"] is True


def test_module_runs_as_script_with_only_the_guest_tree():
    """As in the guests: `python3 -m isostack.isoperf` with PYTHONPATH at the uploaded copy."""
    port = _free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(GUEST_SRC)}
    srv = subprocess.Popen(
        [sys.executable, "-m", "isostack.isoperf", "server", "--bind", "127.0.0.1", "--port", str(port), "--once"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening" in srv.stdout.readline()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "isostack.isoperf",
                "client",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--duration",
                "0.3",
                "--warmup",
                "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr
        assert "Gb/s" in cli.stdout
        assert srv.wait(10) == 0
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def _imports(nodes) -> set[str]:
    modules = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_isoperf_imports_only_the_standard_library():
    """At module level: stdlib only. The IsoStack front-end is imported lazily, for --stack iso only."""
    tree = ast.parse((GUEST_SRC / "isostack" / "isoperf.py").read_text())
    assert _imports(tree.body) - set(sys.stdlib_module_names) - {"__future__"} == set()
    assert _imports(ast.walk(tree)) - set(sys.stdlib_module_names) - {"__future__"} == {"isostack"}


def test_legacy_client_does_not_load_the_isostack_front_end():
    code = (
        "import sys; from isostack import isoperf; "
        "sys.exit(isoperf.main(['client', '--host', '127.0.0.1', '--port', sys.argv[1], '--duration', '1']) != 1 "
        "or 'isostack.frontend' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(GUEST_SRC))
    r = subprocess.run([sys.executable, "-c", code, str(_free_port())], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------ errors


def test_unreachable_server_is_a_clear_error(capsys):
    rc = isoperf.main(["client", "--host", "127.0.0.1", "--port", str(_free_port()), "--duration", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot reach isoperf server at 127.0.0.1" in err
    assert "Traceback" not in err


def test_non_isoperf_peer_is_a_clear_error(capsys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_http() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    t = threading.Thread(target=answer_http, daemon=True)
    t.start()
    rc = isoperf.main(["client", "--host", "127.0.0.1", "--port", str(listener.getsockname()[1])])
    t.join(5)
    listener.close()
    assert rc == 1
    assert "no isoperf server at 127.0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["client", "--host", "h", "--size", "0"], "--size: must be > 0"),
        (["client", "--host", "h", "--size", "abc"], "--size: not an integer"),
        (["client", "--host", "h", "--duration", "-1"], "--duration: must be > 0"),
        (["client", "--host", "h", "--warmup", "nan"], "--warmup: not a finite number"),
        (["client", "--host", "h", "--test", "bogus"], "invalid choice: 'bogus'"),
        (["client", "--host", "h", "--repeats", "0"], "--repeats: must be > 0"),
        (["client", "--host", "h", "--cpu", "-1"], "--cpu: must be >= 0"),
        (["client", "--host", "h", "--response-size", "x"], "--response-size: not an integer"),
        (["client", "--host", "h", "--port", "70000"], "not a TCP port"),
        (["client"], "required: --host"),
        ([], "required: command"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "8", "--verify"], "verification needs size >= 13"),
        (["--test", "rr", "--response-size", "12", "--verify"], "verification needs size >= 13"),
        (["--response-size", "10"], "response size applies to rr and crr, not stream"),
        (["--connections", "1000"], "connections must be between 1 and 256"),
        (["--repeats", "101"], "repeats must be between 1 and 100"),
        (["--cpu", "4096"], "CPU 4096 does not exist (this machine has CPUs 0-"),
    ],
)
def test_invalid_combinations_exit_2_without_contacting_a_server(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.main(["client", "--host", "127.0.0.1", "--port", str(_free_port()), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_server_refuses_unknown_protocol_version_and_stack():
    for start, message in [
        (
            {"type": "start", "version": 99, "test": "stream", "size": 10, "connections": 1, "duration": 1},
            "protocol version 99",
        ),
        (
            {"type": "start", "version": 2, "test": "udp_rr", "size": 10, "connections": 1, "duration": 1},
            "test 'udp_rr' is not implemented",
        ),
        (
            {
                "type": "start",
                "version": 2,
                "test": "stream",
                "stack": "dpdk",
                "size": 10,
                "connections": 1,
                "duration": 1,
            },
            "unknown stack 'dpdk'",
        ),
    ]:
        server = ServerThread()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            ctrl = isoperf.Control(s)
            ctrl.send(**start)
            reply = ctrl.recv()
        assert server.join() == 1
        assert reply["type"] == "error" and message in reply["message"]


def test_params_check_rejects_bad_values():
    with pytest.raises(IsoperfError, match="duration must be > 0"):
        RunParams(duration=0).check()


# ------------------------------------------------------------ latency statistics


def test_latency_summary_nearest_rank_percentiles_in_microseconds():
    samples = [i * 1000 for i in range(1, 1001)]  # 1..1000 us, shuffled order must not matter
    s = isoperf.latency_summary(reversed(samples))
    assert s == {"p50": 500.0, "p90": 900.0, "p99": 990.0, "p99.9": 999.0, "max": 1000.0, "min": 1.0,
                 "mean": 500.5, "samples": 1000}
    assert isoperf.latency_summary([7000])["p99.9"] == 7.0
    assert isoperf.latency_summary([])["samples"] == 0 and isoperf.latency_summary([])["p50"] is None


def test_mean_stddev():
    assert isoperf.mean_stddev([2.0, 4.0, 6.0]) == {"mean": 4.0, "stddev": 2.0}
    assert isoperf.mean_stddev([5.0]) == {"mean": 5.0, "stddev": 0.0}


def test_response_pattern_never_equals_the_request_pattern():
    for conn in range(300):
        req = isoperf.MessageMaker(conn, 64).message(3)
        resp = isoperf.MessageMaker(conn + isoperf.RESPONSE_SEED, 64).message(3)
        assert req != resp
        assert isoperf.MessageMaker(conn, 64).check(resp, 3) == "payload differs from the expected pattern"


# ------------------------------------------------------------ maerts, rr, crr on loopback


def _ordered(lat: dict) -> bool:
    return lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


def test_maerts_client_receives_and_verifies_every_byte():
    server = ServerThread()
    params = RunParams(test="maerts", size=1000, connections=2, duration=0.5, warmup=0.2, verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is True
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert r["client_total_bytes"] % 1000 == 0
    assert 0 < r["bytes"] < r["client_total_bytes"]  # the warm-up is not in the measured interval
    assert r["duration"] == pytest.approx(0.5, abs=0.25)
    assert r["messages"] == r["bytes"] // 1000
    assert r["throughput_bps"] == pytest.approx(r["bytes"] * 8 / r["duration"], rel=1e-3)


def test_maerts_one_corrupted_byte_from_the_server_fails_the_run():
    server = ServerThread(corrupt_byte=5 * 200 + 17)
    params = RunParams(test="maerts", size=200, connections=2, duration=0.3, warmup=0.1, verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0  # the server does not know; the receiving client does
    assert r["verified"] is False
    assert r["errors"] == ["connection 0 message 5 (stream offset 1000): payload differs from the expected pattern"]


@pytest.mark.parametrize("test", ["rr", "crr"])
def test_transactions_with_latency_percentiles(test):
    server = ServerThread()
    params = RunParams(test=test, size=64, response_size=300, connections=2, duration=0.5, warmup=0.2,
                       verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is True
    assert r["test"] == test and r["response_size"] == 300
    assert r["transactions"] > 0 and r["messages"] == r["transactions"]
    assert r["transactions_per_s"] == pytest.approx(r["transactions"] / r["duration"], rel=1e-3)
    assert r["bytes"] == r["transactions"] * (64 + 300)
    lat = r["latency_us"]
    assert lat["samples"] == r["transactions"]  # one sample per measured transaction, warm-up excluded
    assert _ordered(lat) and lat["p50"] > 0
    # lock-step: each connection's latencies add up to at most the interval, plus the two straddling its marks
    assert lat["mean"] * r["transactions"] <= 2 * (r["duration"] * 1e6 + 2 * lat["max"])
    assert r["server_total_bytes"] == r["client_total_bytes"] > r["bytes"]
    assert r["summary"]["transactions_per_s"]["mean"] == r["transactions_per_s"]


def test_rr_without_verification_has_the_same_figures():
    server = ServerThread()
    params = RunParams(test="rr", size=1, connections=1, duration=0.3, warmup=0)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and r["verified"] is None
    assert r["transactions"] > 0 and r["latency_us"]["samples"] == r["transactions"]
    assert r["response_size"] == 1


@pytest.mark.parametrize("test", ["rr", "crr"])
def test_rr_corrupted_request_fails_on_the_server(test):
    server = ServerThread()
    params = RunParams(test=test, size=100, connections=1, duration=0.3, warmup=0.1, verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params, _corrupt_byte=2 * 100 + 98)  # request 2's crc32
    assert server.join() == 1
    assert r["verified"] is False
    word = "request" if test == "rr" else "transaction"
    assert r["errors"] == [f"connection 0 {word} 2: checksum mismatch"]


@pytest.mark.parametrize("test", ["rr", "crr"])
def test_rr_corrupted_response_fails_on_the_client(test):
    server = ServerThread(corrupt_byte=4 * 80 + 20)  # response 4, a payload byte
    params = RunParams(test=test, size=20, response_size=80, connections=2, duration=0.3, warmup=0.1,
                       verify=True)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["verified"] is False
    word = "response" if test == "rr" else "transaction"
    assert r["errors"] == [f"connection 0 {word} 4: payload differs from the expected pattern"]


def test_repeats_report_each_interval_and_mean_stddev():
    server = ServerThread()
    params = RunParams(test="rr", size=32, connections=1, duration=0.3, warmup=0.1, repeats=3)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["repeats"] == 3 and len(r["intervals"]) == 3
    assert sum(i["transactions"] for i in r["intervals"]) == r["transactions"]
    assert sum(i["latency_us"]["samples"] for i in r["intervals"]) == r["latency_us"]["samples"]
    assert r["duration"] == pytest.approx(sum(i["duration"] for i in r["intervals"]), abs=0.01)
    for i in r["intervals"]:
        assert i["duration"] == pytest.approx(0.3, abs=0.2) and "all" in i["cpu"]["client"]
    tps = [i["transactions_per_s"] for i in r["intervals"]]
    s = r["summary"]["transactions_per_s"]
    assert s["mean"] == pytest.approx(sum(tps) / 3, abs=0.01) and s["stddev"] >= 0
    assert r["summary"]["latency_p99_us"]["mean"] > 0


def test_stream_repeats_use_the_servers_intervals():
    server = ServerThread()
    params = RunParams(test="stream", size=512, duration=0.25, warmup=0.1, repeats=2)
    r = isoperf.run_client("127.0.0.1", server.port, params)
    assert server.join() == 0
    assert r["errors"] == [] and len(r["intervals"]) == 2
    assert sum(i["bytes"] for i in r["intervals"]) == r["bytes"] > 0


def test_cpu_binding_pins_every_worker_thread(monkeypatch):
    pinned = []
    real = os.sched_setaffinity

    def spy(pid, cpus):
        real(pid, cpus)
        pinned.append((threading.current_thread().name, os.sched_getaffinity(0)))

    monkeypatch.setattr(isoperf.os, "sched_setaffinity", spy)
    cpu = max(os.sched_getaffinity(0))
    server = ServerThread()
    params = RunParams(test="rr", size=16, connections=3, duration=0.2, warmup=0)
    r = isoperf.run_client("127.0.0.1", server.port, params, cpu=cpu)
    assert server.join() == 0
    assert r["errors"] == [] and r["cpu_binding"] == cpu
    assert sorted(name for name, _ in pinned) == ["isoperf-rrclient0", "isoperf-rrclient1", "isoperf-rrclient2"]
    assert all(cpus == {cpu} for _, cpus in pinned)


@pytest.mark.parametrize("test", ["maerts", "rr", "crr"])
def test_cli_runs_every_test_with_the_keys_the_harness_needs(test, capsys):
    server = ServerThread()
    rc = isoperf.main(["client", "--host", "127.0.0.1", "--port", str(server.port), "--test", test, "--size", "64",
                       "--duration", "0.3", "--warmup", "0.1", "--verify", "--json"])
    server.join()
    text = capsys.readouterr().out
    out = json.loads(text[text.index("{\n") : text.rindex("\n}") + 2])
    assert rc == 0
    for key in REQUIRED_KEYS:
        assert key in out
    assert out["test"] == test and out["verified"] is True


def test_human_output_for_rr_shows_transactions_and_percentiles(capsys):
    server = ServerThread()
    rc = isoperf.main(["client", "--host", "127.0.0.1", "--port", str(server.port), "--test", "rr", "--size", "64",
                       "--duration", "0.3", "--warmup", "0", "--repeats", "2"])
    server.join()
    out = capsys.readouterr().out
    assert rc == 0
    assert "trans/s" in out and "p99.9" in out and "per repeat" in out


def test_rr_data_sockets_disable_nagle(monkeypatch):
    """As sockperf: a message over one MSS must not wait for the ACK of its first segments (MTU 1500 guests)."""
    seen = []
    real = isoperf._nodelay

    def spy(sock):
        real(sock)
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(isoperf, "_nodelay", spy)
    server = ServerThread()
    r = isoperf.run_client("127.0.0.1", server.port, RunParams(test="rr", size=64, response_size=4000,
                                                               connections=2, duration=0.2, warmup=0))
    assert server.join() == 0 and r["errors"] == []
    assert len(seen) == 4 and all(seen)  # two client and two server data sockets


# ------------------------------------------------------------ the C send loop (_sendloop.c)


def _c_loop():
    fn = isoperf._send_loop()
    if fn is None:
        pytest.skip("isostack's native parts cannot be built here")
    return fn


def test_c_send_loop_calls_sendall_until_stop_and_counts_live():
    loop = _c_loop()
    calls = []
    msg = b"x" * 64
    counter = isoperf.array("Q", [0])

    def sendall(m):
        assert counter[0] == len(calls)  # the count of completed calls is visible during the loop
        calls.append(m)

    n = loop(sendall, msg, lambda: len(calls) >= 200, counter)
    assert n == len(calls) == counter[0] == 256  # stop is looked at every 64 calls
    assert all(m is msg for m in calls)


def test_c_send_loop_checks_stop_before_the_first_call():
    calls = []
    assert _c_loop()(calls.append, b"m", lambda: True, bytearray(8)) == 0
    assert calls == []


def test_c_send_loop_propagates_a_failing_sendall_with_the_count_so_far():
    loop = _c_loop()
    counter = isoperf.array("Q", [0])
    calls = []

    def sendall(m):
        if len(calls) == 100:
            raise BrokenPipeError(32, "Broken pipe")
        calls.append(m)

    with pytest.raises(BrokenPipeError):
        loop(sendall, b"m", lambda: False, counter)
    assert counter[0] == 100


def test_c_send_loop_propagates_a_failing_stop():
    def stop():
        raise RuntimeError("stop failed")

    with pytest.raises(RuntimeError, match="stop failed"):
        _c_loop()(len, b"m", stop, bytearray(8))


@pytest.mark.parametrize(
    "args, error",
    [
        ((len, b"m", lambda: True, bytearray(4)), ValueError),  # counter too small
        ((len, b"m", lambda: True, b"12345678"), BufferError),  # counter not writable
        ((None, b"m", lambda: True, bytearray(8)), TypeError),
        ((len, b"m", None, bytearray(8)), TypeError),
        ((len, b"m", lambda: True), TypeError),
    ],
)
def test_c_send_loop_rejects_bad_arguments(args, error):
    with pytest.raises(error):
        _c_loop()(*args)


def test_c_send_loop_lets_other_threads_run_when_sendall_keeps_the_gil():
    """list.append never releases the GIL, and a C-level stop (a list's __len__) runs no bytecode, so the
    interpreter never gets to switch threads: without the loop's own release the main thread would never run
    again to ask for the stop (the child would hang, hence the subprocess and its timeout)."""
    _c_loop()
    code = (
        "import threading, time; from array import array; from isostack import isoperf\n"
        "loop = isoperf._send_loop(); stop = []; sink = []; c = array('Q', [0])\n"
        "t = threading.Thread(target=loop, args=(sink.append, b'm', stop.__len__, c)); t.start()\n"
        "time.sleep(0.2); seen = c[0]; stop.append(1); t.join(5)\n"
        "assert not t.is_alive() and 0 < seen <= c[0] == len(sink), (seen, c[0], len(sink))\n"
        "print('ok', seen)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(GUEST_SRC)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


@pytest.mark.parametrize("loop", ["c", "python"])
def test_stream_send_loops_count_every_byte(loop):
    if loop == "c":
        _c_loop()
    server = ServerThread()
    params = RunParams(size=64, connections=2, duration=0.4, warmup=0.1)
    r = isoperf.run_client("127.0.0.1", server.port, params, send_loop=loop)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["send_loop"] == loop
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert r["client_total_bytes"] % 64 == 0
    assert 0 < r["client_sent_bytes"] <= r["client_total_bytes"]  # the marks saw the C loop's live count


def test_send_loop_is_python_with_verify_and_null_for_other_tests():
    server = ServerThread()
    r = isoperf.run_client("127.0.0.1", server.port, RunParams(size=64, duration=0.2, warmup=0, verify=True),
                           send_loop="auto")
    assert server.join() == 0 and r["errors"] == [] and r["send_loop"] is None
    server = ServerThread()
    r = isoperf.run_client("127.0.0.1", server.port, RunParams(test="rr", size=64, duration=0.2, warmup=0))
    assert server.join() == 0 and r["send_loop"] is None


def test_send_loop_c_where_it_cannot_load_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(isoperf, "_SEND_LOOP", [None])
    assert isoperf.resolve_send_loop("auto") == "python"
    with pytest.raises(SystemExit) as exc:
        isoperf.main(["client", "--host", "127.0.0.1", "--port", str(_free_port()), "--send-loop", "c"])
    assert exc.value.code == 2
    assert "the C send loop is not available here" in capsys.readouterr().err


def test_sndbuf_is_set_on_the_data_sockets_before_any_data(monkeypatch):
    seen = []
    real = isoperf._connect

    def connect(host, port, timeout, stack="legacy"):
        s = real(host, port, timeout, stack)
        if port != server.port:  # a data connection (the control connection keeps the default)
            orig = s.setsockopt

            def setsockopt(level, name, value):
                seen.append((level, name, value, s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)))
                return orig(level, name, value)

            s = _Wrapped(s, setsockopt)
        return s

    server = ServerThread()
    monkeypatch.setattr(isoperf, "_connect", connect)
    r = isoperf.run_client("127.0.0.1", server.port, RunParams(size=64, connections=2, duration=0.2, warmup=0),
                           sndbuf=65536)
    assert server.join() == 0 and r["errors"] == [] and r["sndbuf"] == 65536
    assert [(lvl, name, value) for lvl, name, value, _ in seen] == [(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)] * 2


class _Wrapped:
    """A socket whose setsockopt is observed; everything else is the socket's."""

    def __init__(self, sock, setsockopt):
        self._sock = sock
        self.setsockopt = setsockopt

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_sndbuf_bounds_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.main(["client", "--host", "h", "--sndbuf", "0"])
    assert exc.value.code == 2 and "--sndbuf: must be > 0" in capsys.readouterr().err


def test_workers_are_joined_within_one_deadline_for_all():
    """Stuck workers share the timeout: the control exchange is not held for N times it."""
    release = threading.Event()
    workers = [threading.Thread(target=release.wait, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    t0 = time.monotonic()
    isoperf._join_all(workers, 0.3)
    assert time.monotonic() - t0 < 0.9  # one by one with 0.3 s each would take 1.2 s
    assert all(w.is_alive() for w in workers)
    release.set()
    isoperf._join_all(workers, 5)
    assert not any(w.is_alive() for w in workers)


def test_a_connection_broken_at_the_end_is_an_error_in_the_result_not_a_crash(monkeypatch):
    """A data connection reset under the client (its shutdown fails): the session still ends and reports it."""
    real = isoperf._connect

    def connect(host, port, timeout, stack="legacy"):
        s = real(host, port, timeout, stack)
        if port != server.port:
            real_shutdown = s.shutdown

            def shutdown(how):
                real_shutdown(how)  # the server's side ends (as a reset would end it), the call fails
                raise ConnectionResetError(104, "Connection reset by peer")

            s = _Wrapped(s, s.setsockopt)
            s.shutdown = shutdown
        return s

    server = ServerThread()
    monkeypatch.setattr(isoperf, "_connect", connect)
    r = isoperf.run_client("127.0.0.1", server.port, RunParams(size=64, connections=2, duration=0.2, warmup=0))
    server.join()
    assert "connection 0: shutdown failed: [Errno 104] Connection reset by peer" in r["errors"]
    assert "connection 1: shutdown failed: [Errno 104] Connection reset by peer" in r["errors"]


def test_cli_reports_a_broken_connection_as_an_error_line(monkeypatch, capsys):
    def broken(*a, **k):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(isoperf, "run_client", broken)
    assert isoperf.main(["client", "--host", "127.0.0.1", "--port", "5701"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "isoperf: error: [Errno 104] Connection reset by peer"

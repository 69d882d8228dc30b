"""The `isoperf` command (isoperf.cli): JSON and human output, exit codes, one-line errors, and running
as `python3 -m isoperf` from the guest tree alone (stdlib only)."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from isoperf_helpers import GUEST_SRC, ServerThread, free_port

import isoperf.cli
import isoperf.client
from testbed.harness.isoperf_cmd import REQUIRED_KEYS


def test_cli_json_output_and_exit_code(capsys):
    server = ServerThread()
    rc = isoperf.cli.main(
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
    """As in the guests: `python3 -m isoperf` with PYTHONPATH at the uploaded copy."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(GUEST_SRC)}
    srv = subprocess.Popen(
        [sys.executable, "-m", "isoperf", "server", "--bind", "127.0.0.1", "--port", str(port), "--once"],
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
                "isoperf",
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
    """At module level: stdlib only (and isoperf's own modules). The IsoStack front-end is imported lazily, for
    --stack iso only."""
    modules = sorted((GUEST_SRC / "isoperf").glob("*.py"))
    assert {m.name for m in modules} >= {"cli.py", "client.py", "server.py", "sockets.py"}
    anywhere: set[str] = set()
    for module in modules:
        tree = ast.parse(module.read_text())
        assert _imports(tree.body) - set(sys.stdlib_module_names) - {"__future__"} == set(), module.name
        anywhere |= _imports(ast.walk(tree))
    assert anywhere - set(sys.stdlib_module_names) - {"__future__"} == {"isostack"}


def test_legacy_client_does_not_load_the_isostack_front_end():
    code = (
        "import sys; from isoperf import cli; "
        "sys.exit(cli.main(['client', '--host', '127.0.0.1', '--port', sys.argv[1], '--duration', '1']) != 1 "
        "or 'isostack.frontend' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(GUEST_SRC))
    r = subprocess.run([sys.executable, "-c", code, str(free_port())], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def test_unreachable_server_is_a_clear_error(capsys):
    rc = isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(free_port()), "--duration", "1"])
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
    rc = isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(listener.getsockname()[1])])
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
        (["client", "--host", "h", "--intervals", "0"], "--intervals: must be > 0"),
        (["client", "--host", "h", "--repeats", "2"], "renamed: use --intervals"),
        (["client", "--host", "h", "--cpu", "-1"], "--cpu: must be >= 0"),
        (["client", "--host", "h", "--response-size", "x"], "--response-size: not an integer"),
        (["client", "--host", "h", "--port", "70000"], "not a TCP port"),
        (["client"], "required: -H/--host"),
        ([], "required: command"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.cli.main(argv)
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
        (["--intervals", "101"], "intervals must be between 1 and 100"),
        (["--cpu", "4096"], "CPU 4096 does not exist (this machine has CPUs 0-"),
    ],
)
def test_invalid_combinations_exit_2_without_contacting_a_server(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(free_port()), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("test", ["maerts", "rr", "crr"])
def test_cli_runs_every_test_with_the_keys_the_harness_needs(test, capsys):
    server = ServerThread()
    rc = isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(server.port), "--test", test, "--size", "64",
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
    rc = isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(server.port), "--test", "rr", "--size", "64",
                       "--duration", "0.3", "--warmup", "0", "--intervals", "2"])
    server.join()
    out = capsys.readouterr().out
    assert rc == 0
    assert "trans/s" in out and "p99.9" in out and "per interval" in out


def test_sndbuf_bounds_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.cli.main(["client", "--host", "h", "--sndbuf", "0"])
    assert exc.value.code == 2 and "--sndbuf: must be > 0" in capsys.readouterr().err


def test_cli_reports_a_broken_connection_as_an_error_line(monkeypatch, capsys):
    def broken(*a, **k):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(isoperf.client, "run_client", broken)
    assert isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", "5701"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "isoperf: error: [Errno 104] Connection reset by peer"


@pytest.mark.parametrize("short, long", [
    (["client", "-H", "h", "-p", "6000", "-m", "64", "-l", "3", "-O", "0.5", "-P", "4", "-A", "0", "-J"],
     ["client", "--host", "h", "--port", "6000", "--size", "64", "--duration", "3", "--warmup", "0.5",
      "--connections", "4", "--cpu", "0", "--json"]),
    (["client", "-H", "h", "-t", "7"], ["client", "--host", "h", "--duration", "7"]),  # iperf3's -t, netperf's -l
    (["server", "-B", "10.0.0.1", "-p", "6001", "-1"], ["server", "--bind", "10.0.0.1", "--port", "6001", "--once"]),
])
def test_the_short_flags_of_netperf_and_iperf3_mean_the_long_options(short, long):
    parser = isoperf.cli.build_parser()
    assert parser.parse_args(short) == parser.parse_args(long)
    bare = ["client", "--host", "h"] if short[0] == "client" else ["server"]
    assert parser.parse_args(short) != parser.parse_args(bare)  # they were not all defaults


def test_short_flags_are_in_the_help_and_checked_like_the_long_ones(capsys):
    with pytest.raises(SystemExit):
        isoperf.cli.main(["client", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("-H HOST, --host HOST", "-l DURATION, -t DURATION, --duration DURATION", "-P CONNECTIONS",
                 "-m SIZE, --size SIZE", "-J, --json", "-O WARMUP", "-A CPU"):
        assert flag in out
    assert "short flags as netperf and iperf3 users type them" in out
    with pytest.raises(SystemExit) as exc:
        isoperf.cli.main(["client", "-H", "h", "-P", "0"])
    assert exc.value.code == 2 and "argument -P/--connections: must be > 0" in capsys.readouterr().err


def test_a_run_with_the_short_flags(capsys):
    server = ServerThread()
    rc = isoperf.cli.main(["client", "-H", "127.0.0.1", "-p", str(server.port), "-m", "100", "-t", "0.3", "-O", "0",
                           "-P", "2", "-J"])
    server.join()
    text = capsys.readouterr().out
    out = json.loads(text[text.index("{\n") : text.rindex("\n}") + 2])
    assert rc == 0 and (out["size"], out["connections"], out["requested_duration"]) == (100, 2, 0.3)

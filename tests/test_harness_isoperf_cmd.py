"""The isoperf command lines the runner sends to the guests, and the parse of the client's output."""

from __future__ import annotations

import json
import shlex
import threading

import pytest

import isoperf.cli
import isoperf.client
import isoperf.server
from isoperf.protocol import RunParams
from testbed.harness import isoperf_cmd, pinning
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.isoperf_cmd import IsoperfOutputError
from testbed.harness.playbook import parse_playbook

PB = """\
version: 1
name: x
tests:
  - name: t
    test: stream
    size: 1448
    connections: 2
    duration: 10
    warmup: 2.5
    verify: true
    port: 5702
"""


def _case(text: str = PB):
    return parse_playbook(text).cases()[0]


def test_client_command_is_a_valid_isoperf_invocation():
    cmd = isoperf_cmd.client_command(GuestLayout(), _case(), "10.10.0.2")
    assert cmd == (
        "PYTHONPATH=/opt python3 -m isoperf client --host 10.10.0.2 --port 5702 --test stream "
        "--stack legacy --size 1448 --connections 2 --duration 10 --warmup 2.5 --json --verify"
    )
    argv = shlex.split(cmd)[4:]
    args = isoperf.cli.build_parser().parse_args(argv)
    assert (args.host, args.port, args.size, args.connections, args.duration, args.warmup, args.verify, args.json) == (
        "10.10.0.2",
        5702,
        1448,
        2,
        10.0,
        2.5,
        True,
        True,
    )


def test_client_command_without_verify():
    cmd = isoperf_cmd.client_command(GuestLayout(), _case(PB.replace("verify: true", "verify: false")), "h")
    assert "--verify" not in cmd


def test_server_commands():
    layout = GuestLayout(remote_root="/opt dir", python="python3", log_dir="/tmp")
    start = isoperf_cmd.server_start_command(layout, "10.10.0.2", 5701)
    assert start == (
        "rm -f /tmp/isoperf-server-5701.log; nohup env PYTHONPATH='/opt dir' python3 -m isoperf server"
        " --bind 10.10.0.2 --port 5701 --once"
        " > /tmp/isoperf-server-5701.log 2>&1 < /dev/null & echo $!"
    )
    assert "kill -0 42" in isoperf_cmd.server_ready_command(layout, 5701, 42)
    assert isoperf_cmd.server_stop_command(42, grace_s=2) == (
        "for i in $(seq 20); do kill -0 42 2>/dev/null || exit 0; sleep 0.1; done; kill 42 2>/dev/null; true"
    )


def test_control_path_arguments_parse_as_isoperf_options():
    """The management path in the commands: the client's control host/port, the server's data bind."""
    cmd = isoperf_cmd.client_command(GuestLayout(), _case(), "10.10.0.254", ("10.254.3.6", 5702))
    args = isoperf.cli.build_parser().parse_args(shlex.split(cmd)[4:])
    assert (args.host, args.port, args.control_host, args.control_port) == ("10.10.0.254", 5702, "10.254.3.6", 5702)
    same = isoperf_cmd.client_command(GuestLayout(), _case(), "10.10.0.2", ("10.10.0.2", 5702))
    assert "--control-host" not in same  # the data path: nothing to add
    start = isoperf_cmd.server_start_command(GuestLayout(), "0.0.0.0", 5701, "10.10.0.2")
    argv = shlex.split(start.split("nohup env ", 1)[1].split(" >", 1)[0])
    sargs = isoperf.cli.build_parser().parse_args(argv[argv.index("server"):])
    assert (sargs.bind, sargs.port, sargs.data_bind, sargs.once) == ("0.0.0.0", 5701, "10.10.0.2", True)
    assert "--data-bind" not in isoperf_cmd.server_start_command(GuestLayout(), "10.10.0.2", 5701, "10.10.0.2")


def test_timeout_covers_warmup_and_duration():
    assert isoperf_cmd.client_timeout(_case()) > 12.5


GOOD_OUTPUT = {
    "test": "stream",
    "size": 1448,
    "connections": 2,
    "duration": 10.0,
    "bytes": 1000,
    "messages": 0,
    "throughput_bps": 800.0,
    "messages_per_s": 0.0,
    "cpu": {"client": {}, "server": {}},
    "verified": True,
    "errors": [],
}


def test_parse_good_output():
    assert isoperf_cmd.parse_client_output(0, json.dumps(GOOD_OUTPUT), "") == GOOD_OUTPUT


def test_parse_failed_verification_keeps_the_result():
    out = {**GOOD_OUTPUT, "verified": False, "errors": ["connection 0 message 3: checksum mismatch"]}
    assert isoperf_cmd.parse_client_output(1, json.dumps(out), "")["errors"] == out["errors"]


def test_parse_error_without_json_quotes_stderr():
    with pytest.raises(IsoperfOutputError, match="exited 1: isoperf: error: cannot reach isoperf server"):
        isoperf_cmd.parse_client_output(1, "", "isoperf: error: cannot reach isoperf server at 10.10.0.2:5701\n")
    with pytest.raises(IsoperfOutputError, match="exited 127: sh: python3: not found"):
        isoperf_cmd.parse_client_output(127, "", "sh: python3: not found\n")
    with pytest.raises(IsoperfOutputError, match="exited 0: no output"):
        isoperf_cmd.parse_client_output(0, "", "")


def test_parse_incompatible_json():
    with pytest.raises(IsoperfOutputError, match="lacks throughput_bps"):
        isoperf_cmd.parse_client_output(
            0, json.dumps({k: v for k, v in GOOD_OUTPUT.items() if k != "throughput_bps"}), ""
        )


def test_required_keys_are_what_isoperf_prints():
    """The harness's expectations stay in step with the tool: run it on loopback for a moment."""
    ports = []
    ready = threading.Event()
    server = threading.Thread(
        target=isoperf.server.run_server,
        args=("127.0.0.1", 0, True, lambda p: (ports.append(p), ready.set())),
        daemon=True,
    )
    server.start()
    assert ready.wait(5)
    result = isoperf.client.run_client("127.0.0.1", ports[0], RunParams(size=64, duration=0.1, warmup=0))
    server.join(10)
    assert set(isoperf_cmd.REQUIRED_KEYS) <= set(result)


# ------------------------------------------------------------ stack iso


def test_client_command_for_stack_iso_pinned_to_cpu0_finds_isostackd():
    case = _case(PB.replace("    port: 5702\n", "    port: 5702\n    stack: iso\n    size: 64\n").replace(
        "    size: 1448\n", ""))
    cmd = pinning.pinned(isoperf_cmd.client_command(GuestLayout(), case, "10.10.0.2"), (0,))  # as case.py does
    assert cmd == (
        "taskset -c 0 env ISOSTACK_SOCKET=/run/isostack/isostackd.sock PYTHONPATH=/opt python3 -m isoperf"
        " client --host 10.10.0.2 --port 5702 --test stream --stack iso --size 64 --connections 2 --duration 10"
        " --warmup 2.5 --json --verify"
    )
    argv = shlex.split(cmd)
    args = isoperf.cli.build_parser().parse_args(argv[argv.index("isoperf") + 1 :])
    assert (args.stack, args.size) == ("iso", 64)


def test_client_command_passes_the_new_options_and_isoperf_parses_them():
    text = PB.replace("test: stream", "test: rr").replace(
        "    port: 5702\n", "    port: 5702\n    response_size: 512\n    intervals: 3\n    cpu: 1\n    sndbuf: 131072\n"
    )
    case = _case(text)
    cmd = isoperf_cmd.client_command(GuestLayout(), case, "10.10.0.2")
    assert "--test rr " in cmd and cmd.endswith("--verify --response-size 512 --intervals 3 --cpu 1 --sndbuf 131072")
    args = isoperf.cli.build_parser().parse_args(shlex.split(cmd)[4:])
    assert (args.test, args.response_size, args.intervals, args.cpu, args.sndbuf) == ("rr", 512, 3, 1, 131072)
    assert isoperf_cmd.client_timeout(case) >= 2.5 + 3 * 10


@pytest.mark.parametrize("test", ["maerts", "crr"])
def test_client_command_leaves_out_defaults(test):
    cmd = isoperf_cmd.client_command(GuestLayout(), _case(PB.replace("test: stream", f"test: {test}")), "h")
    assert f"--test {test} " in cmd
    assert "--response-size" not in cmd and "--intervals" not in cmd and "--cpu" not in cmd and "--sndbuf" not in cmd

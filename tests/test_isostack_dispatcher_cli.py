"""isostackd's command line: the CPU it pins to, and what it refuses (cli.py)."""

import subprocess
import sys
import time

import pytest

from isostack.dispatcher.cli import choose_cpu


def test_cpu_choice():
    assert choose_cpu(1, False, {0, 1}, {1}) == 1
    assert choose_cpu(None, False, {0, 1, 2, 3}, {2, 3}) == 3
    with pytest.raises(SystemExit, match="does not exist"):
        choose_cpu(5, True, {0, 1}, set())
    with pytest.raises(SystemExit, match="shared"):
        choose_cpu(1, False, {0, 1}, set())
    assert choose_cpu(1, True, {0, 1}, set()) == 1


def test_cli_refuses_missing_cpu(tmp_path, guest_env):
    r = subprocess.run([sys.executable, "-m", "isostack.dispatcher", "--socket", str(tmp_path / "s"), "--cpu", "4096",
                        "--no-placement"], env=guest_env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "CPU 4096 does not exist" in r.stderr


def test_cli_refuses_second_instance_on_same_socket(isostackd_process, guest_env):
    _proc, path = isostackd_process
    r = subprocess.run([sys.executable, "-m", "isostack.dispatcher", "--socket", path, "--allow-shared",
                        "--no-placement"], env=guest_env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "another isostackd" in r.stderr


def test_limit_flags_set_the_limits():
    from isostack.dispatcher.cli import build_parser, limits_from
    from isostack.dispatcher.state import Limits

    assert limits_from(build_parser().parse_args([])) == Limits()
    args = build_parser().parse_args(["--max-apps", "2", "--max-handshakes", "3", "--handshake-timeout-ms", "250",
                                      "--max-watches", "5", "--max-kernel-sockets", "6", "--queue-budget", "7",
                                      "--app-budget", "8", "--app-budget-us", "9"])
    assert limits_from(args) == Limits(max_apps=2, max_handshakes=3, handshake_timeout_s=0.25, max_watches=5,
                                       max_kernel_sockets=6, queue_budget=7, app_budget=8, app_budget_us=9)


@pytest.mark.parametrize("flag, value, why", [("--max-apps", "0", "0 is not in 1..65536"),
                                              ("--queue-budget", "-3", "-3 is not in 1..1048576"),
                                              ("--handshake-timeout-ms", "60001", "60001 is not in 1..60000"),
                                              ("--max-watches", "many", "'many' is not an integer")])
def test_limit_flags_refuse_bad_values(tmp_path, guest_env, flag, value, why):
    r = subprocess.run([sys.executable, "-m", "isostack.dispatcher", "--socket", str(tmp_path / "s"), flag, value],
                       env=guest_env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"isostackd: error: argument {flag}: {why}"


def test_help_lists_the_limit_flags_with_their_defaults(guest_env):
    r = subprocess.run([sys.executable, "-m", "isostack.dispatcher", "--help"], env=guest_env, capture_output=True,
                       text=True, timeout=30)
    text = " ".join(r.stdout.split())
    for flag, default in (("--max-apps", 64), ("--handshake-timeout-ms", 10000), ("--app-budget", 1024)):
        assert flag in text and f"(default {default})" in text


def test_a_limit_flag_reaches_the_running_dispatcher(isostackd_launcher, tmp_path):
    from isostack.attach import AttachError
    from isostack.frontend import Stack
    from isostack.layout import Geometry

    path = tmp_path / "limited.sock"
    process = isostackd_launcher.start(path, "--max-apps", "1")
    geometry = Geometry(max_sockets=4, tx_size=1 << 12, rx_size=1 << 12)
    deadline = time.monotonic() + 10
    while True:  # the socket file exists a moment before it listens
        try:
            first = Stack(str(path), geometry)
            break
        except ConnectionRefusedError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
    try:
        with pytest.raises(AttachError, match="serves 1 applications already"):
            Stack(str(path), geometry)
    finally:
        first.close()
    isostackd_launcher.stop(process)

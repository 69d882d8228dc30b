"""isostackd's command line: the CPU it pins to, and what it refuses (cli.py)."""

import subprocess
import sys

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

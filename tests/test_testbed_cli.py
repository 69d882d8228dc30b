"""testbed.cli: bad input and a missing testbed are one-line errors, never a traceback, and start nothing."""

from __future__ import annotations

import subprocess
import sys


def test_cli_up_with_bad_isolate_cpus_is_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "up", "--state-dir", str(tmp_path / "st"),
                          "--isolate-cpus", "5"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "vCPU 5 does not exist" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "st").exists()


def test_cli_status_without_testbed_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "status", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "no testbed is up" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_cli_up_with_unreachable_uri_fails_before_building_anything(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "up", "--state-dir", str(tmp_path / "st"),
                          "--uri", "qemu+unix:///system?socket=/nonexistent/libvirt.sock"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "cannot open libvirt URI" in res.stdout and "/nonexistent/libvirt.sock" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "st" / "topology.json").exists()


def test_cli_restart_device_model_without_testbed_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "restart-device-model", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "no testbed is up" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_cli_up_with_icount_and_kvm_is_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "up", "--state-dir", str(tmp_path / "st"),
                          "--accel", "kvm", "--icount", "3"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "--icount needs TCG" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "st").exists()


def test_cli_up_with_a_bad_icount_is_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "up", "--state-dir", str(tmp_path / "st"),
                          "--icount", "auto,sleep=off"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "sleep=off goes neither with shift=auto" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_status_line_of_icount_says_off_or_the_argument_and_the_shared_thread():
    from testbed.cli import icount_line
    from testbed.icount import parse

    assert icount_line(None).startswith("off")
    line = icount_line(parse("2").record())
    assert "-icount shift=2" in line and "thread=single" in line and "share one host thread" in line

"""`vhea serve` / `vhea stats` as a user runs them: subprocesses, exit codes, messages, JSON shape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from vhea.frontend import Frontend, ethernet

VHEA = [sys.executable, "-m", "vhea.cli"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*VHEA, *args], capture_output=True, text=True, timeout=timeout)


def assert_usage_error(p: subprocess.CompletedProcess, message: str) -> None:
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_socket_dir():
    p = run("serve", "--socket-dir", "/nonexistent/vhea", "--ports", "a,b")
    assert_usage_error(p, "socket dir /nonexistent/vhea does not exist")


def test_port_used_twice(sockdir):
    assert_usage_error(run("serve", "--socket-dir", sockdir, "--ports", "a,b,a"), "port name 'a' is used twice")


@pytest.mark.parametrize("name", ["", "a/b", "-x", "control", "x" * 40, "a b"])
def test_bad_port_name(sockdir, name):
    assert_usage_error(run("serve", "--socket-dir", sockdir, "--ports", f"a,{name}"), "bad port name")


def test_socket_path_over_the_unix_limit():
    d = tempfile.mkdtemp(prefix="v" * 90, dir="/tmp")
    try:
        p = run("serve", "--socket-dir", d, "--ports", "a")
        assert_usage_error(p, "over the 107-byte limit")
    finally:
        os.rmdir(d)


def test_stats_without_a_device_model(sockdir):
    p = run("stats", "--socket-dir", sockdir)
    assert_usage_error(p, "no device model is listening on")


def test_serve_stats_json_and_clean_sigterm(sockdir):
    proc = subprocess.Popen([*VHEA, "serve", "--socket-dir", sockdir, "--ports", "a,b"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(sockdir, "control.sock")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a, b = Frontend(os.path.join(sockdir, "a.sock")), Frontend(os.path.join(sockdir, "b.sock"))
        try:
            a.handshake()
            b.handshake()
            b.post_rx()
            frames = [ethernet("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0a", bytes(46 + i)) for i in range(10)]
            for f in frames:
                a.send_frame(f)
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while len(got) < 10 and time.monotonic() < deadline:
                got += b.receive()
                time.sleep(0.01)
            assert got == frames
            p = run("stats", "--socket-dir", sockdir, "--json")
            assert p.returncode == 0, p.stderr
            st = json.loads(p.stdout)
            table = run("stats", "--socket-dir", sockdir)
            assert table.returncode == 0, table.stderr
            assert "switch fdb" in table.stdout and "02:00:00:00:00:0a" in table.stdout
        finally:
            a.close()
            b.close()
        assert set(st) == {"datapath", "ports", "switch", "control"}
        assert st["datapath"] in ("native", "python")
        assert set(st["ports"]) == {"a", "b"}
        pa, pb = st["ports"]["a"], st["ports"]["b"]
        assert set(pa) == {"kind", "connected", "connection", "from_guest_frames", "from_guest_bytes",
                           "to_guest_frames", "to_guest_bytes", "drops", "classifier", "link", "link_emulated",
                           "link_changes", "refused_link_down", "warnings_suppressed", "closed", "coalesce", "pacing",
                           "pause", "queues"}
        assert pa["connected"] is True and pa["connection"] == "connected" and pa["link"] == "up"
        assert pa["kind"] == "vhost-user"
        assert pa["from_guest_frames"] == 10 and pa["from_guest_bytes"] == sum(map(len, frames))
        assert pb["to_guest_frames"] == 10 and pb["to_guest_bytes"] == sum(map(len, frames))
        assert pa["queues"][1] == {"index": 1, "frames": 10, "bytes": sum(map(len, frames)),
                                   "kicks": pa["queues"][1]["kicks"], "calls": pa["queues"][1]["calls"],
                                   "calls_skipped": 0, "drops": {}}
        assert pa["queues"][1]["kicks"] >= 1
        assert [q["index"] for q in pb["queues"]] == [0, 1]
        assert st["switch"]["fdb"] == [{"mac": "02:00:00:00:00:0a", "port": "a"}]
        # after the front-ends go, the ports show disconnected and a's MAC is flushed from the fdb
        deadline = time.monotonic() + 5
        while json.loads(run("stats", "--socket-dir", sockdir, "--json").stdout)["ports"]["a"]["connected"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(run("stats", "--socket-dir", sockdir, "--json").stdout)["switch"]["fdb"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "stopped" in err
        assert os.listdir(sockdir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stale_socket_is_replaced_but_a_live_one_is_an_error(sockdir):
    import socket as socket_mod

    stale = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    stale.bind(os.path.join(sockdir, "a.sock"))
    stale.close()  # the file stays, nobody listens: what a killed back-end leaves behind
    live = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    live.bind(os.path.join(sockdir, "b.sock"))
    live.listen(1)
    try:
        p = run("serve", "--socket-dir", sockdir, "--ports", "a,b")
        assert_usage_error(p, "b.sock is in use by a running process")
        assert not os.path.exists(os.path.join(sockdir, "control.sock"))
    finally:
        live.close()
    proc = subprocess.Popen([*VHEA, "serve", "--socket-dir", sockdir, "--ports", "a,b"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(sockdir, "control.sock")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0  # generous: the host may be loaded
        assert os.listdir(sockdir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("choice", ["python", "auto", "native"])
def test_serve_datapath_choice_and_fallback_without_the_native_module(sockdir, choice):
    """--datapath python|native|auto; without the native module (VHEA_NO_NATIVE, as without gcc) auto falls back
    to the Python datapath with a logged line and native is a usage error."""
    import signal

    env = dict(os.environ, VHEA_NO_NATIVE="1")
    cmd = [*VHEA, "serve", "--socket-dir", sockdir, "--ports", "a", "--datapath", choice]
    if choice == "native":
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)
        assert_usage_error(p, "the native datapath is not available: VHEA_NO_NATIVE is set")
        return
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(sockdir, "control.sock")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        st = json.loads(run("stats", "--socket-dir", sockdir, "--json").stdout)
        assert st["datapath"] == "python"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    assert ("native datapath not available" in err) == (choice == "auto")

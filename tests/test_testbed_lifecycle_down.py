"""`testbed down` without topology.json: a `testbed up` killed before it wrote it leaves a supervisor, vhea and
QEMUs that only the state dir knows about (pid files, sockets). Real processes stand in for them; a PID in a
stale pid file that is not this state dir's process is never signalled."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from rich.console import Console

from testbed import devicemodel, supervisor, virt
from testbed.image import cache as image_cache
from testbed.lifecycle import down
from testbed.lifecycle.options import UpOptions
from testbed.lifecycle.up import up

SLEEP = "import time; time.sleep(60)"
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
# Listens on the path given after --socket-dir (as control.sock), like vhea serve, then sleeps.
LISTEN = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
          "s.bind(sys.argv[sys.argv.index('--socket-dir') + 1] + '/control.sock'); s.listen(1); time.sleep(60)")


@pytest.fixture
def sdir():
    """A short state dir (vhea's sockets live below it; unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="tbd", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(f"{d}-other", ignore_errors=True)


@pytest.fixture
def children():
    """Processes started by a test; killed and reaped at its end whatever happened."""
    procs: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", *argv], stdin=subprocess.DEVNULL))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while devicemodel.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not devicemodel.pid_alive(pid)


def wait_for(path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def cli(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    return res


def test_down_without_topology_stops_the_real_supervisor_and_vhea_an_interrupted_up_left(sdir):
    """What `testbed up` had started when it was killed: vhea, and the supervisor serving (no guests here)."""
    (sdir / supervisor.DOMAINS_FILE).write_text(json.dumps([]))
    dm = devicemodel.start(sdir / "vhea", ["a", "b"], 1, sdir / "vhea.log", pid_file=sdir / down.VHEA_PID_FILE)
    sup = 0
    try:
        sup = supervisor.spawn(sdir, virt.embed_uri(sdir / "libvirt"))
        assert (sdir / down.VHEA_PID_FILE).read_text() == f"{dm}\n"
        assert (sdir / supervisor.PID_FILE).read_text() == f"{sup}\n"
        assert not (sdir / "topology.json").exists()

        res = cli("status", "--state-dir", str(sdir))
        assert res.returncode == 1
        out = " ".join(res.stdout.split())
        assert "no testbed is up" in out and "`testbed down` stops them" in out
        assert f"the supervisor (pid {sup}, answering)" in out and f"the device model (pid {dm})" in out

        res = cli("down", "--state-dir", str(sdir))
        assert res.returncode == 0
        assert "the supervisor stopped no guests" in res.stdout and f"stopped the device model (pid {dm})" in res.stdout
        assert gone(sup) and gone(dm)
        left = sorted(p.name for p in sdir.iterdir())
        assert left == ["domains.json", "libvirt", "supervisor.log", "vhea", "vhea.log"]  # no pid file, no socket
        assert list((sdir / "vhea").iterdir()) == []

        res = cli("down", "--state-dir", str(sdir))
        assert res.returncode == 0 and "no testbed is up" in res.stdout
        res = cli("status", "--state-dir", str(sdir))
        assert res.returncode == 1 and "no testbed is up" in res.stdout and "still run" not in res.stdout
    finally:
        for pid in (sup, dm):
            if pid and devicemodel.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _qemu_pid_file(sdir: Path, guest: str, pid: int) -> Path:
    path = sdir / "libvirt" / "run" / "qemu" / f"{guest}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")
    return path


def test_down_without_topology_signals_what_does_not_answer(sdir, children):
    """A supervisor that never got to serve (killed while starting the guests), a QEMU it had started, and a
    vhea without a pid file, found through its control socket: each is stopped by PID."""
    sock_dir = sdir / "vhea"
    sock_dir.mkdir()
    sup = children(SLEEP, "-m", "testbed.supervisor", "--state-dir", str(sdir), "--uri", "qemu:///embed?root=x")
    qemu = children(SLEEP, "qemu-system-x86_64", "-name", "guest=iso-a", "-pidfile",
                    str(sdir / "libvirt" / "run" / "qemu" / "iso-a.pid"))
    dm = children(LISTEN, "vhea", "serve", "--socket-dir", str(sock_dir), "--ports", "a,b")
    (sdir / supervisor.PID_FILE).write_text(f"{sup.pid}\n")
    _qemu_pid_file(sdir, "iso-a", qemu.pid)
    wait_for(sock_dir / "control.sock")
    (sock_dir / "a.sock").touch()  # not a socket: left alone

    left = down.find_leftovers(sdir)
    assert (left.supervisor_pid, left.supervisor_answers, left.device_model_pid) == (sup.pid, False, dm.pid)
    assert left.qemus == [(qemu.pid, "iso-a")]

    assert down.down(sdir, quiet()) is True
    for p in (sup, qemu, dm):
        assert p.wait(timeout=10) is not None
    assert qemu.returncode == -signal.SIGKILL and sup.returncode == -signal.SIGTERM
    assert not (sdir / supervisor.PID_FILE).exists()
    assert sorted(p.name for p in sock_dir.iterdir()) == ["a.sock"]  # the stale control socket is removed
    assert not down.find_leftovers(sdir)


def test_a_supervisor_that_ignores_sigterm_is_killed(sdir, children):
    sup = children(IGNORE_TERM, "-m", "testbed.supervisor", "--state-dir", str(sdir))
    (sdir / supervisor.READY_FILE).write_text(f"{sup.pid}\n")  # the pid the supervisor writes once it serves
    time.sleep(0.3)  # let it install its handler
    t0 = time.monotonic()
    assert down.stop_leftovers(sdir, quiet(), supervisor_timeout_s=0.5) is True
    assert sup.wait(timeout=10) == -signal.SIGKILL and time.monotonic() - t0 < 5
    assert not (sdir / supervisor.READY_FILE).exists()


def test_stale_pid_files_never_signal_an_unrelated_process(sdir, children):
    """Recycled PIDs: an unrelated process, and the supervisor and vhea of another state dir, named by this
    state dir's pid files, all keep running; the stale pid files are removed. The other state dir's path starts
    with this one's (/tmp/tbdX-other): matching it as a mere prefix would claim its processes."""
    other = Path(f"{sdir}-other")
    (other / "vhea").mkdir(parents=True)
    unrelated = children(SLEEP)
    foreign_sup = children(SLEEP, "-m", "testbed.supervisor", "--state-dir", str(other))
    foreign_dm = children(LISTEN, "vhea", "serve", "--socket-dir", str(other / "vhea"))
    foreign_qemu = children(SLEEP, "qemu-system-x86_64", "-pidfile", str(other / "iso-a.pid"))
    (sdir / supervisor.PID_FILE).write_text(f"{foreign_sup.pid}\n")
    (sdir / supervisor.READY_FILE).write_text(f"{unrelated.pid}\n")
    (sdir / down.VHEA_PID_FILE).write_text(f"{foreign_dm.pid}\n")
    _qemu_pid_file(sdir, "iso-a", unrelated.pid)
    _qemu_pid_file(sdir, "iso-b", foreign_qemu.pid)
    wait_for(other / "vhea" / "control.sock")

    assert not down.find_leftovers(sdir)
    assert down.down(sdir, quiet()) is False
    time.sleep(0.3)
    assert all(p.poll() is None for p in (unrelated, foreign_sup, foreign_dm, foreign_qemu))
    assert not any((sdir / f).exists() for f in (supervisor.PID_FILE, supervisor.READY_FILE, down.VHEA_PID_FILE))
    res = cli("status", "--state-dir", str(sdir))
    assert res.returncode == 1 and "no testbed is up" in res.stdout and "still run" not in res.stdout


def test_pid_files_are_written_before_the_processes_are_ready(sdir):
    """Both start helpers record the PID at once: even a start that fails leaves the PID it had."""
    with pytest.raises(devicemodel.DeviceModelError):
        devicemodel.start(sdir / "vhea", ["bad name"], 1, sdir / "vhea.log", pid_file=sdir / down.VHEA_PID_FILE)
    assert int((sdir / down.VHEA_PID_FILE).read_text()) > 0
    (sdir / supervisor.DOMAINS_FILE).write_text("not json")
    with pytest.raises(supervisor.SupervisorError):
        supervisor.spawn(sdir, "qemu:///embed?root=" + str(sdir / "libvirt"))
    assert int((sdir / supervisor.PID_FILE).read_text()) > 0


def test_up_first_stops_what_an_interrupted_up_left(sdir, children, monkeypatch):
    sup = children(SLEEP, "-m", "testbed.supervisor", "--state-dir", str(sdir))
    (sdir / supervisor.PID_FILE).write_text(f"{sup.pid}\n")

    def no_image(*_a, **_k):
        raise RuntimeError("stop before building anything")

    monkeypatch.setattr(image_cache, "ensure_image", no_image)
    with pytest.raises(RuntimeError, match="stop before building"):
        up(UpOptions(state_dir=sdir), quiet())
    assert sup.wait(timeout=10) == -signal.SIGTERM


def test_socket_peer_pid_names_the_listener_and_zero_without_one(sdir):
    path = sdir / "x.sock"
    assert down.socket_peer_pid(path) == 0
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(1)
        assert down.socket_peer_pid(path) == os.getpid()
    assert down.socket_peer_pid(path) == 0  # closed: refused

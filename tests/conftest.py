"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from vm_helpers import Testbed

GUEST = str(Path(__file__).resolve().parent.parent / "isostack-guest")


@pytest.fixture
def sockdir():
    """A short temporary directory for vhost-user sockets (unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="vh", dir="/tmp")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


# ---------------------------------------------------------------- kernel TCP peers


@pytest.fixture
def listener():
    """A kernel TCP listener on 127.0.0.1 (backlog 8)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


class EchoPeer:
    """A kernel TCP echo server on 127.0.0.1 (one thread per connection)."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.addr = self.srv.getsockname()
        self.conns = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while b := c.recv(65536):
                c.sendall(b)
        except OSError:
            pass
        c.close()

    def close(self):
        self.srv.close()


@pytest.fixture
def echo():
    e = EchoPeer()
    yield e
    e.close()


# ---------------------------------------------------------------- isostackd as a subprocess


@pytest.fixture(scope="session")
def guest_env():
    """The environment of a subprocess that imports isostack from the source tree."""
    return dict(os.environ, PYTHONPATH=GUEST)


class IsostackdLauncher:
    """Starts `python3 -m isostack.dispatcher` subprocesses (shared CPU, no NIC placement, a short busy-poll
    window) and stops the ones still running when its scope ends."""

    def __init__(self, env: dict):
        self.env = env
        self.running: list[subprocess.Popen] = []

    def start(self, path, *extra) -> subprocess.Popen:
        """Start one isostackd on attach socket `path`; returns once the socket exists."""
        process = subprocess.Popen(
            [sys.executable, "-m", "isostack.dispatcher", "--socket", str(path), "--allow-shared", "--no-placement",
             "--busy-poll-us", "200", "--sleep-ms", "20", *extra],
            env=self.env, stderr=subprocess.PIPE, text=True,
        )
        self.running.append(process)
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "isostackd did not start"
            time.sleep(0.02)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM and wait; generous, since isostackd's graceful close of its sockets may linger up to 5 s
        (dispatcher.commands.CLOSE_LINGER_S) and a loaded host adds to that. Killed, and the test fails, if not."""
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise AssertionError("isostackd did not exit within 20 s of SIGTERM") from None
        finally:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)


@pytest.fixture(scope="module")
def isostackd_launcher(guest_env):
    launcher = IsostackdLauncher(guest_env)
    yield launcher
    launcher.stop_all()


class RunningIsostackd(NamedTuple):
    process: subprocess.Popen
    path: str


@pytest.fixture(scope="module")
def isostackd_process(isostackd_launcher, tmp_path_factory):
    """One isostackd subprocess for the whole test module: (process, attach socket path)."""
    path = tmp_path_factory.mktemp("iso") / "isostackd.sock"
    process = isostackd_launcher.start(path)
    yield RunningIsostackd(process, str(path))
    isostackd_launcher.stop(process)


@pytest.fixture(scope="module")
def isostackd(isostackd_process):
    """The attach socket path of the module's isostackd subprocess."""
    return isostackd_process.path


# ---------------------------------------------------------------- a Dispatcher in a thread of the test process


class DispatcherThread:
    """A Dispatcher of this process run by a thread, which a test may stop to drive the loop by hand."""

    def __init__(self, path: str, **options):
        from isostack.dispatcher.loop import Dispatcher

        self.path = path
        self.dispatcher = Dispatcher(path, None, **{"busy_poll_us": 200, "sleep_ms": 20, **options})
        self.thread: threading.Thread | None = None
        self.closed = False

    def start(self) -> None:
        self.dispatcher.running = True
        self.thread = threading.Thread(target=self.dispatcher.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread; the dispatcher stays usable by hand (poll_once, sleep_until_woken)."""
        self.dispatcher.running = False
        if self.thread is not None:
            self.thread.join(5)

    def close(self) -> None:
        self.stop()
        if not self.closed:
            self.closed = True
            self.dispatcher.close()


@pytest.fixture
def dispatcher_thread(tmp_path):
    """Factory: dispatcher_thread(name="d.sock", start=True, **Dispatcher options) -> a running DispatcherThread
    (busy poll 200 us, sleep 20 ms unless told); closed at the end of the test."""
    made: list[DispatcherThread] = []

    def make(name: str = "d.sock", start: bool = True, **options) -> DispatcherThread:
        running = DispatcherThread(str(tmp_path / name), **options)
        made.append(running)
        if start:
            running.start()
        return running

    yield make
    for running in made:
        running.close()


class HandDriven(NamedTuple):
    dispatcher: object  # isostack.dispatcher.loop.Dispatcher, its thread stopped
    stack: object  # isostack.frontend.Stack attached to it
    sock: object  # a connected IsoSocket of that stack
    peer: socket.socket  # the kernel socket at the other end


@pytest.fixture
def hand_driven(dispatcher_thread, listener):
    """A connection through a dispatcher whose thread is stopped once the connection is up: the test drives the
    loop by hand (poll_once, sleep_until_woken), no timing involved."""
    from isostack.frontend import Stack
    from isostack.layout import Geometry

    running = dispatcher_thread()
    st = Stack(running.path, Geometry(max_sockets=4, tx_size=4096, rx_size=4096, notif_rings=1))
    try:
        s = st.create_connection(listener.getsockname(), timeout=5)
        peer, _ = listener.accept()
        running.stop()
        yield HandDriven(running.dispatcher, st, s, peer)
        peer.close()
    finally:
        st.close()


@pytest.fixture(params=[True, False], ids=["c", "python"])
def fast(request, monkeypatch):
    """The front-end's send path: the C one (_fastpath.Tx, skipped when the extension lacks it) or Python's."""
    from isostack.frontend import tx

    if request.param and tx.C_TX_PATH is None:
        pytest.skip("the extension has no Tx here")
    if not request.param:
        monkeypatch.setattr(tx, "C_TX_PATH", None)
    return request.param


# ---------------------------------------------------------------- processes and testbeds of the vm tests


@pytest.fixture
def processes(sockdir):
    """The processes a test starts on `sockdir` (QEMU, vhea) are appended here: after the test they are stopped,
    the last started first (SIGTERM, SIGKILL after 10 s), before `sockdir` is removed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="module")
def testbed_up_args() -> list[str]:
    """The `testbed up` flags of a module's testbed (a module overrides this fixture, e.g. `--queues 2`)."""
    return []


@pytest.fixture(scope="module")
def testbed(request, tmp_path_factory, testbed_up_args):
    """A testbed of the test module's own (`vm` tests): `testbed up` in a fresh state dir before its first test
    that asks for it, `testbed down` after its last test, whatever happened."""
    bed = Testbed(tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_")))
    try:
        bed.up(*testbed_up_args)
        yield bed
    finally:
        bed.down()


@pytest.fixture(scope="module")
def topology(testbed):
    """The topology (testbed.state.Topology) as `testbed up` left the module's testbed."""
    return testbed.topology()

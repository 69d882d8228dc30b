"""Shared fixtures for the vhea tests: a back-end in a thread, front-ends connected to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from vhea import control, native
from vhea.frontend import Frontend, ethernet
from vhea.server import Server
from vhea.server import loop as server_module

#: the two datapaths every ring-walking test runs on: the Python reference and _datapath.c
DATAPATHS = ["python", "native"]


@pytest.fixture(params=DATAPATHS)
def datapath(request, monkeypatch):
    """Servers made in the test run this datapath (use with pytestmark = pytest.mark.usefixtures("datapath"))."""
    if request.param == "native" and native.MOD is None:
        pytest.skip(f"native datapath not available: {native.why_not}")
    monkeypatch.setattr(server_module, "DEFAULT_DATAPATH", request.param)
    return request.param

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
MAC_C = "02:00:00:00:00:0c"
BCAST = "ff:ff:ff:ff:ff:ff"


@contextlib.contextmanager
def running_server(socket_dir: str, ports: list[str], queue_pairs: int = 1, ageing: float = 300.0, **kw
                   ) -> Iterator[Server]:
    """A Server in a thread; `kw` goes to Server (e.g. flow_control=True, pause_max_us=...)."""
    server = Server(socket_dir, ports, queue_pairs, ageing=ageing, control=control, **kw)
    server.bind()
    with serving(server):
        yield server


@contextlib.contextmanager
def serving(server: Server, name: str = "vhea-test") -> Iterator[Server]:
    """The server's loop in a thread (a front-end's handshake needs it answering); stopped and joined after."""
    t = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.stop()
        t.join(5)
        assert not t.is_alive(), "server thread did not stop"


@contextlib.contextmanager
def frontend(server: Server, port: str, **kw) -> Iterator[Frontend]:
    fe = Frontend(server.ports[port].path, **kw)
    try:
        yield fe
    finally:
        fe.close()


def wait_for(cond, timeout: float = 5.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def receive_n(fe: Frontend, n: int, pair: int = 0, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    wait_for(lambda: bool(got.extend(fe.receive(pair))) or len(got) >= n, timeout)
    return got


def frame(dst: str, src: str, tag: int, size: int = 60) -> bytes:
    payload = tag.to_bytes(4, "big") + bytes((tag + i) & 0xFF for i in range(size - 18))
    return ethernet(dst, src, payload)


# ---- a real `vhea serve` subprocess, for the hostile front-end tests (tests/test_vhea_hostile_*.py) ----------

VHEA_CMD = [sys.executable, "-m", "vhea.cli"]


@contextlib.contextmanager
def vhea_serve(sockdir: str, ports: list[str], datapath: str = "auto", extra: tuple[str, ...] = ()
               ) -> Iterator[subprocess.Popen]:
    """`vhea serve` in a subprocess (`extra`: more of its options), its sockets ready; stopped with SIGTERM.
    The test fails if it died."""
    proc = subprocess.Popen([*VHEA_CMD, "serve", "--socket-dir", sockdir, "--ports", ",".join(ports),
                             "--datapath", datapath, "--log-level", "warning", *extra],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(os.path.join(sockdir, "control.sock")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "vhea serve did not start"
            time.sleep(0.05)
        yield proc
        assert proc.poll() is None, f"vhea died ({proc.returncode}): {proc.stderr.read()[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()  # a hung loop does not answer SIGTERM
                proc.wait(10)
        proc.stderr.close()


def serve_stats(sockdir: str, timeout: float = 10.0) -> dict:
    """`vhea stats --json` of the subprocess (fails the test if it does not answer: a hung loop)."""
    p = subprocess.run([*VHEA_CMD, "stats", "--socket-dir", sockdir, "--json"], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def serve_frontend(sockdir: str, port: str, **kw) -> Frontend:
    return Frontend(os.path.join(sockdir, f"{port}.sock"), **kw)


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def timed_exchange(a: Frontend, b: Frontend, tag: int, timeout: float = 5.0) -> float:
    """a sends one frame to b; the seconds until b has it (fails if it never arrives)."""
    f = frame(MAC_B, MAC_A, tag)
    start = time.monotonic()
    a.send_frame(f)
    got = receive_n(b, 1, timeout=timeout)
    assert got == [f], f"frame {tag} not forwarded a -> b"
    a.reclaim(a.tx_ring())
    b.post_rx(1)
    return time.monotonic() - start

"""Shared fixtures for the vhea tests: a back-end in a thread, front-ends connected to it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from vhea import control, native
from vhea import server as server_module
from vhea.frontend import Frontend, ethernet
from vhea.server import Server

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
    """A Server in a thread, answering control commands; `kw` goes to Server (e.g. flow_control=True)."""
    server = Server(socket_dir, ports, queue_pairs, ageing=ageing, control=control, **kw)
    server.bind()
    t = threading.Thread(target=server.serve_forever, name="vhea-test", daemon=True)
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

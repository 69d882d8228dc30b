"""Shared by the isoperf tests: a one-session server in a thread, a free port, an observed socket."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import isoperf.server

GUEST_SRC = Path(__file__).resolve().parents[1] / "isostack-guest"


class ServerThread:
    """An isoperf server serving exactly one session in a thread of the test process."""

    def __init__(self, corrupt_byte: int | None = None):
        self.port: int | None = None
        self.status: int | None = None
        bound = threading.Event()

        def ready(port: int) -> None:
            self.port = port
            bound.set()

        def run() -> None:
            self.status = isoperf.server.run_server("127.0.0.1", 0, once=True, ready=ready, _corrupt_byte=corrupt_byte)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert bound.wait(5), "server did not start"

    def join(self) -> int | None:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Wrapped:
    """A socket whose setsockopt is observed; everything else is the socket's."""

    def __init__(self, sock, setsockopt):
        self._sock = sock
        self.setsockopt = setsockopt

    def __getattr__(self, name):
        return getattr(self._sock, name)

"""A slow or hostile reader cannot make isostackd buffer without bound (issue 13, credits).

An application accepts a connection through IsoStack (a passive open through the real isostackd process) and
then never reads, or reads one byte a second, while a kernel-socket peer sends into it as fast as it can for
some seconds.  isostackd receives only into the application's rx ring, and only while the ring has credits:
once it is full it stops reading the kernel socket, the kernel's receive buffer fills, the window closes and
the peer's sends stop being accepted.  Checked: the peer's sent bytes stop growing, isostackd received at most
one ring's worth more than the application read, isostackd's RSS stays within a bound, and another
application (an echo server through the same isostackd) keeps being served throughout."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from chaos_helpers import Lines, isostackd_stats, kill_and_reap
from vhea_helpers import proc_rss_kib

from isostack.layout import Geometry

FLOOD_S = 6.0
RING = Geometry().rx_size  # one socket's rx ring: all isostackd may hold of a stalled connection
RSS_GROWTH_BOUND = 16 << 20  # the ring's pages (shared memory) and the interpreter's noise; not the flood (MiBs)

# An application listening through the front-end: accepts one connection, then reads never or 1 B a second.
READER = """
import sys, time
from isostack import frontend as iso
mode = sys.argv[1]
srv = iso.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4)
print("port", srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
print("accepted", flush=True)
n = 0
while True:
    if mode == "never":
        time.sleep(3600)
    data = conn.recv(1)
    if not data:
        break
    n += len(data)
    print("read", n, flush=True)
    time.sleep(1.0)
"""

# A well-behaved application: an echo server through the front-end (one connection).
ECHO = """
from isostack import frontend as iso
srv = iso.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4)
print("port", srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
while data := conn.recv(65536):
    conn.sendall(data)
"""


def start_app(script: str, env: dict, *args: str) -> tuple[subprocess.Popen, Lines, int]:
    app = subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE, text=True)
    lines = Lines(app.stdout)
    first = lines.next()
    assert first.startswith("port "), first
    return app, lines, int(first.split()[1])


class Flooder:
    """Sends into a connection as fast as the kernel accepts (non-blocking, polled), counting what it took."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunk = b"x" * 65536
        self.conn.setblocking(False)
        try:
            while not self._stop.is_set():
                try:
                    self.sent += self.conn.send(chunk)
                except BlockingIOError:
                    self._stop.wait(0.005)
        except OSError as e:
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("mode", ["never", "slow"])
def test_a_reader_that_does_not_keep_up_is_held_back_by_credits(mode, isostackd_launcher, tmp_path, guest_env):
    path = str(tmp_path / "iso.sock")
    daemon = isostackd_launcher.start(path)
    log = Lines(daemon.stderr)
    env = dict(guest_env, ISOSTACK_SOCKET=path)
    reader, reader_lines, reader_port = start_app(READER, env, mode)
    echo, _echo_lines, echo_port = start_app(ECHO, env)
    peer = socket.create_connection(("127.0.0.1", reader_port), timeout=10)
    good = socket.create_connection(("127.0.0.1", echo_port), timeout=10)
    flooder = None
    try:
        assert reader_lines.next() == "accepted"
        good.sendall(b"warm")
        assert good.recv(4) == b"warm"
        rss0 = proc_rss_kib(daemon.pid) * 1024
        before = isostackd_stats(daemon, log)
        flooder = Flooder(peer)
        rss, sent, round_trips = [], [], 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < FLOOD_S:  # the good application answers all along
            message = round_trips.to_bytes(4, "big") * 250
            good.sendall(message)
            got = b""
            while len(got) < len(message):
                part = good.recv(len(message) - len(got))
                assert part, "the echo application closed"
                got += part
            assert got == message
            round_trips += 1
            rss.append(proc_rss_kib(daemon.pid) * 1024)
            sent.append((time.monotonic() - t0, flooder.sent))
            time.sleep(0.1)
        flooder.stop()
        after = isostackd_stats(daemon, log)
        assert flooder.error is None, flooder.error
        read = [int(line.split()[1]) for line in reader_lines.ready() if line.startswith("read ")]
        app_read = read[-1] if read else 0
        if mode == "never":
            assert app_read == 0
        else:
            assert app_read >= 2  # it did read, slowly

        # the window closed: in the last two seconds of the flood the peer's kernel took (almost) nothing more
        late = [n for t, n in sent if t >= FLOOD_S - 2.0]
        assert late[-1] - late[0] <= 64 * 1024 + 2 * app_read, sent
        # isostackd took from the kernel at most a ring's worth beyond what the application read (plus the
        # echo application's bytes; +1: a byte the slow reader took but has not printed yet), however much the
        # peer offered
        echoed = round_trips * 1000 + 4
        received = after["recv_bytes"] - before["recv_bytes"]
        assert received <= RING + app_read + 1 + echoed, (received, RING, app_read, echoed)
        assert flooder.sent > 4 * RING and flooder.sent > received  # the rest waits in kernel buffers
        assert after["apps_failed"] == 0
        # isostackd's memory: bounded, and flat once the ring was full (no growth in the second half)
        assert max(rss) - rss0 <= RSS_GROWTH_BOUND, (rss0, rss)
        half = len(rss) // 2
        assert max(rss[half:]) - max(rss[:half]) <= 2 << 20, rss
        assert round_trips >= 10  # the other application was served throughout (each round trip checked)
        assert reader.poll() is None and echo.poll() is None and daemon.poll() is None
        print(f"\n{mode}: peer sent {flooder.sent} B, isostackd received {received} B, app read {app_read} B,"
              f" isostackd RSS {rss0 >> 10} -> max {max(rss) >> 10} KiB, {round_trips} echo round trips")
    finally:
        if flooder is not None:
            flooder.stop()
        peer.close()
        good.close()
        for app in (reader, echo):
            kill_and_reap(app)
        isostackd_launcher.stop(daemon)

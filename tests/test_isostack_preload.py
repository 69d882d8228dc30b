"""libisostack-preload.so and isostack-run on the host, against a real isostackd on loopback.

The socket-semantics cases (tests/preload_cases.py: non-blocking connect, EAGAIN, partial writes, EOF, RST,
poll/select/epoll with mixed fds, close while another thread is blocked, ...) run once on the kernel's sockets
and once with the shim preloaded, the same unmodified script: both must observe the same and what is expected
here. isostackd's counters must show that the shim's traffic went through it."""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "isostack-guest"
SHIM = GUEST / "isostack" / "libisostack-preload.so"
CASES = Path(__file__).resolve().parent / "preload_cases.py"

EXPECTED = {
    "close_while_blocked": {"still_blocked": True, "reader": "late data", "reader_returned": True, "peer_eof": True},
    "dup_and_close": {"got": "via dup", "back": "back", "raw": "raw write", "peer_eof": True},
    "eagain": {"first": "EAGAIN", "got": "hello", "second": "EAGAIN", "fcntl_nonblock": True},
    "eof": {"recvs": ["abc", "", ""], "pollin": True, "rdhup": True, "half_close_send": "after eof"},
    "epoll_mixed": {"nothing": [], "first": ["sock"], "both": ["pipe", "sock"], "writable": [["sock", True]],
                    "after_unregister": []},
    "ipv6": {"family": True, "got": "six", "peer": "::1"},
    "listen_accept": {"nonblocking_accept": "EAGAIN", "pollin": True, "got": "ping", "back": "pong", "names": True,
                      "eof": True},
    "nonblocking_connect": {"first": "EINPROGRESS", "pollout": True, "pollerr": False, "so_error": 0,
                            "peername": True, "again": 0},
    "options_and_names": {"nodelay": True, "keepalive": True, "type": 1, "error": 0, "sockname": True,
                          "peername": True, "rcvbuf_positive": True, "recv_timeout": "None",
                          "unconnected_send": "EPIPE", "unconnected_recv": "ENOTCONN", "bad_shutdown": "EINVAL"},
    "partial_writes": {"first_partial": True, "eagain": True, "pollout_after": True, "all_arrived": True},
    "poll_mixed": {"nothing": [], "pipe_only": ["pipe"], "sock_only": ["sock"], "both": ["pipe", "sock"],
                   "select": [["pipe", "sock"], ["sock"]], "woken_by_socket": ["sock"], "woke_in_time": True},
    "refused_connect": {"first": "EINPROGRESS", "pollerr": True, "so_error": "ECONNREFUSED",
                        "blocking": "ECONNREFUSED"},
    "rst": {"pollin": True, "pollerr": True, "recv": "ECONNRESET"},
    "shutdown_while_blocked": {"returned": True, "got": "", "send_after_shut_wr": "EPIPE", "peer_eof": True},
    "udp_untouched": {"got": "datagram"},
    "vectors_peek_waitall": {"gathered": "abcdefghij", "peeked": "hello", "scattered": [7, "hel", "lo w"],
                             "recvmsg_flags": 0, "readv": 4, "waitall_to_eof": "x"},
}


class Isostackd:
    """isostackd as a subprocess whose log (and so its counters, on SIGUSR1) the test reads."""

    def __init__(self, path: Path, log: Path):
        self.path, self.log = path, log
        self._log_file = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "isostack.dispatcher", "--socket", str(path), "--allow-shared", "--no-placement",
             "--busy-poll-us", "200", "--sleep-ms", "20"],
            env=dict(os.environ, PYTHONPATH=str(GUEST)), stderr=self._log_file)
        deadline = time.monotonic() + 10
        while not path.exists():
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "isostackd did not start"
            time.sleep(0.02)

    def stats(self) -> dict:
        """Its counters now: the "stats: {...}" line SIGUSR1 makes it log."""
        before = self.log.read_text().count(" stats: {")
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [ln for ln in self.log.read_text().splitlines() if " stats: {" in ln]
            if len(lines) > before:
                return ast.literal_eval(lines[-1].split(" stats: ", 1)[1])
            time.sleep(0.05)
        raise AssertionError("isostackd logged no stats")

    def stats_once(self, ready, timeout_s: float = 10.0) -> dict:
        """Its counters once ready(counters) holds (it notices an application's exit asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if ready(stats) or time.monotonic() > deadline:
                return stats
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log_file.close()


@pytest.fixture(scope="module")
def shim() -> Path:
    assert SHIM.exists(), f"{SHIM} is not built: `make native` (or pip install -e .)"
    return SHIM


@pytest.fixture(scope="module")
def isostackd(tmp_path_factory):
    d = tmp_path_factory.mktemp("preload")
    running = Isostackd(d / "isostackd.sock", d / "isostackd.log")
    yield running
    running.stop()


def preloaded(shim: Path, isostackd: Isostackd, **extra) -> dict:
    return dict(os.environ, LD_PRELOAD=str(shim), ISOSTACK_SOCKET=str(isostackd.path), **extra)


def run_cases(env: dict | None, *names: str) -> dict:
    out = subprocess.run([sys.executable, str(CASES), *names], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def observed(shim, isostackd):
    """Both runs, and isostackd's counters before and after the shim's."""
    kernel = run_cases(None)
    before = isostackd.stats()
    through_shim = run_cases(preloaded(shim, isostackd))
    after = isostackd.stats_once(lambda st: st["apps_detached"] > before["apps_detached"])
    return kernel, through_shim, before, after


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_the_shim_has_the_kernels_socket_semantics(observed, case):
    kernel, through_shim, _before, _after = observed
    if kernel[case].get("skipped"):
        pytest.skip(kernel[case]["skipped"])
    assert kernel[case] == EXPECTED[case], "the kernel itself behaves otherwise: the case is wrong"
    assert through_shim[case] == kernel[case]


def test_the_cases_cover_every_expectation(observed):
    kernel, through_shim, _before, _after = observed
    assert set(kernel) == set(EXPECTED) == set(through_shim)


def test_the_shims_traffic_went_through_isostackd(observed):
    """The partial-writes case alone sends a full tx ring (256 KiB) and 100000 bytes more; every TCP socket of the
    script was a command."""
    _kernel, _shim, before, after = observed
    assert after["apps_attached"] == before["apps_attached"] + 1
    assert after["apps_detached"] == before["apps_detached"] + 1  # the script's exit detached it
    assert after["send_bytes"] - before["send_bytes"] > (1 << 18) + 100000
    assert after["recv_bytes"] - before["recv_bytes"] > 0
    assert after["commands"] - before["commands"] > 40
    assert after["bad_entries"] == before["bad_entries"] and after["apps_failed"] == before["apps_failed"]


def test_what_cannot_be_answered_honestly_fails_with_the_expected_errno(shim, isostackd):
    script = (
        "import socket, errno\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
        "s = socket.create_connection(srv.getsockname())\n"
        "out = []\n"
        "for level, name in ((socket.IPPROTO_TCP, socket.TCP_INFO), (socket.SOL_SOCKET, socket.SO_LINGER)):\n"
        "    try: s.getsockopt(level, name, 104)\n"
        "    except OSError as e: out.append(errno.errorcode[e.errno])\n"
        "try: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b'reno')\n"
        "except OSError as e: out.append(errno.errorcode[e.errno])\n"
        "try: s.send(b'x', socket.MSG_OOB)\n"
        "except OSError as e: out.append(errno.errorcode[e.errno])\n"
        "print(' '.join(out))\n")
    out = subprocess.run([sys.executable, "-c", script], env=preloaded(shim, isostackd), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ENOPROTOOPT", "ENOPROTOOPT", "ENOPROTOOPT", errno.errorcode[errno.EOPNOTSUPP]]


def test_without_isostackd_socket_fails_with_enetdown_and_says_why(shim, tmp_path):
    script = (
        "import socket, errno\n"
        "for _ in range(2):\n"
        "    try: socket.socket()\n"
        "    except OSError as e: print(errno.errorcode[e.errno])\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n"  # not ours: the kernel's
        "print('udp ok')\n")
    env = dict(os.environ, LD_PRELOAD=str(shim), ISOSTACK_SOCKET=str(tmp_path / "none.sock"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["ENETDOWN", "ENETDOWN", "udp", "ok"]
    assert out.stderr.count("libisostack-preload: cannot attach to isostackd at") == 1  # said once
    assert str(tmp_path / "none.sock") in out.stderr


def test_a_forked_child_does_not_use_its_parents_sockets(shim, isostackd):
    script = (
        "import os, socket, errno\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
        "addr = srv.getsockname(); s = socket.create_connection(addr); c, _ = srv.accept()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try: s.send(b'child'); code = 1\n"
        "    except OSError as e: code = 0 if e.errno == errno.EBADF else 2\n"
        "    s.close()\n"  # must not close the parent's connection
        "    t = socket.create_connection(addr); t.sendall(b'own'); t.close()\n"
        "    os._exit(code)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "s.sendall(b'parent'); print(os.waitstatus_to_exitcode(status), c.recv(100).decode())\n"
        "d, _ = srv.accept(); print(d.recv(100).decode())\n")
    out = subprocess.run([sys.executable, "-c", script], env=preloaded(shim, isostackd), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "parent", "own"]


def test_isostack_run_launches_a_program_over_isostackd(shim, isostackd):
    before = isostackd.stats()
    script = ("import socket\n"
              "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
              "s = socket.create_connection(srv.getsockname()); c, _ = srv.accept()\n"
              "s.sendall(b'x' * 100000); n = 0\n"
              "while n < 100000: n += len(c.recv(65536))\n"
              "print(n)\n")
    out = subprocess.run([sys.executable, "-m", "isostack.run", "--socket", str(isostackd.path), sys.executable, "-c",
                          script], env=dict(os.environ, PYTHONPATH=str(GUEST)), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["100000"]
    after = isostackd.stats()
    assert after["apps_attached"] == before["apps_attached"] + 1
    assert after["send_bytes"] - before["send_bytes"] >= 100000  # both ends are IsoStack sockets


def test_isostack_run_says_when_isostackd_is_not_running(tmp_path):
    stale = tmp_path / "stale.sock"
    stale.write_text("")  # a file where no one listens
    env = dict(os.environ, PYTHONPATH=str(GUEST))
    for path, why in ((tmp_path / "none.sock", "no attach socket"), (stale, "nothing listens")):
        out = subprocess.run([sys.executable, "-m", "isostack.run", "--socket", str(path), "true"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 69
        assert "isostackd is not running" in out.stderr and why in out.stderr
    out = subprocess.run([sys.executable, "-m", "isostack.run", "--socket", str(stale), "true"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 69


def test_isostack_run_reports_a_missing_program(isostackd):
    out = subprocess.run([sys.executable, "-m", "isostack.run", "--socket", str(isostackd.path), "no-such-program-x"],
                         env=dict(os.environ, PYTHONPATH=str(GUEST)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 127 and "no-such-program-x: command not found" in out.stderr


def test_isostack_run_puts_the_shim_first_in_ld_preload():
    from isostack import run

    env = run.environment({"LD_PRELOAD": "/lib/other.so"}, "/run/x.sock", run.LIBRARY)
    assert env["LD_PRELOAD"].split() == [str(run.LIBRARY), "/lib/other.so"]
    assert env["ISOSTACK_SOCKET"] == "/run/x.sock"


def test_listening_unix_paths_reads_only_listeners(tmp_path):
    from isostack import run

    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0005 01 1234 /run/isostack/isostackd.sock\n"
        "0000000000000000: 00000003 00000000 00000000 0005 03 1235 /run/isostack/isostackd.sock\n"
        "0000000000000000: 00000002 00000000 00000000 0001 01 1236 /tmp/client.sock\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1237\n")
    assert run.listening_unix_paths(str(table)) == {"/run/isostack/isostackd.sock"}


def test_calls_fail_with_enetdown_when_isostackd_goes_away(shim, tmp_path):
    """A blocked recv, poll and a new socket() all end with an error, never a hang, when isostackd stops."""
    running = Isostackd(tmp_path / "gone.sock", tmp_path / "gone.log")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    script = (
        "import socket, errno, select\n"
        f"s = socket.create_connection(('127.0.0.1', {srv.getsockname()[1]}))\n"
        "print('connected', flush=True)\n"
        "try: s.recv(10); print('data')\n"
        "except OSError as e: print(errno.errorcode[e.errno])\n"
        "p = select.poll(); p.register(s, select.POLLIN); ev = p.poll(10000)\n"
        "print(bool(ev and ev[0][1] & select.POLLERR))\n"
        "try: socket.socket(); print('socket')\n"
        "except OSError as e: print(errno.errorcode[e.errno])\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=preloaded(shim, running), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        peer, _ = srv.accept()
        time.sleep(0.3)  # the script is blocked in recv
        running.stop()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        srv.close()
    assert proc.returncode == 0, err
    assert out.split() == ["ENETDOWN", "True", "ENETDOWN"]
    peer.close()


def test_an_exec_d_program_gets_ebadf_not_a_bare_eventfd(shim, isostackd):
    """Underneath, an IsoStack socket's fd is always close-on-exec: the new image cannot use it (its memory is
    gone), so it must find the fd closed, while F_GETFD still says what the program asked for."""
    script = (
        "import os, socket, fcntl, sys\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
        "s = socket.create_connection(srv.getsockname())\n"
        "os.set_inheritable(s.fileno(), True)\n"
        "print(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC, flush=True)\n"
        "os.execv(sys.executable, [sys.executable, '-c', 'import os, sys\\n"
        "try: os.write(int(sys.argv[1]), b\\'x\\'); print(\\'written\\')\\n"
        "except OSError as e: print(e.errno == 9)', str(s.fileno())])\n")
    out = subprocess.run([sys.executable, "-c", script], env=preloaded(shim, isostackd), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_tool(isostackd: Isostackd, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isostack.run", "--socket", str(isostackd.path), *argv],
                          env=dict(os.environ, PYTHONPATH=str(GUEST)), capture_output=True, text=True, timeout=120)


def test_debians_iperf3_client_runs_over_isostackd(shim, isostackd):
    """An unmodified C program: iperf3's client (select, non-blocking connect, read/write) through isostack-run,
    against a kernel iperf3 server; every byte the server received left through isostackd."""
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed")
    port = _free_port()
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before = isostackd.stats()
        out = _run_tool(isostackd, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "1", "-l", "64", "--json")
        after = isostackd.stats()
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    received = json.loads(out.stdout)["end"]["sum_received"]["bytes"]
    assert received > 0
    assert after["apps_attached"] == before["apps_attached"] + 1
    assert after["send_bytes"] - before["send_bytes"] >= received


def test_debians_sockperf_ping_pong_runs_with_both_ends_over_isostackd(shim, isostackd):
    """sockperf's server (epoll, accept) and client (recvfrom/sendto) both under isostack-run."""
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed")
    port = _free_port()
    before = isostackd.stats()
    server = subprocess.Popen([sys.executable, "-m", "isostack.run", "--socket", str(isostackd.path), "sockperf",
                               "sr", "--tcp", "-i", "127.0.0.1", "-p", str(port)], env=dict(os.environ,
                              PYTHONPATH=str(GUEST)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        out = _run_tool(isostackd, "sockperf", "pp", "--tcp", "-i", "127.0.0.1", "-p", str(port), "-t", "1", "-m",
                        "64")
    finally:
        server.terminate()
        server.wait(10)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    received = int(re.search(r"ReceivedMessages=(\d+)", out.stdout + out.stderr).group(1))
    assert received > 100
    after = isostackd.stats()
    assert after["apps_attached"] == before["apps_attached"] + 2  # the server and the client
    assert after["send_bytes"] - before["send_bytes"] >= 2 * 64 * received  # requests and replies


def test_the_socket_limit_is_emfile_and_closed_slots_come_back(shim, isostackd):
    script = (
        "import socket, errno\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(8)\n"
        "socks = []\n"
        "try:\n"
        "    while True: socks.append(socket.create_connection(srv.getsockname()))\n"
        "except OSError as e: print(len(socks) + 1, errno.errorcode[e.errno])\n"
        "for s in socks: s.close()\n"
        "print(len([socket.socket() for _ in range(7)]))\n")  # the closes are in flight: socket() waits for them
    out = subprocess.run([sys.executable, "-c", script], env=preloaded(shim, isostackd, ISOSTACK_MAX_SOCKETS="8"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "EMFILE", "7"]


def test_isostackd_is_found_under_the_name_it_was_bound_to(tmp_path):
    """isostackd binds "<path>.<pid>.tmp" and renames it into place; /proc/net/unix keeps the bound name."""
    from isostack import run

    path = tmp_path / "isostackd.sock"
    path.write_text("")
    table = tmp_path / "unix"
    header = "Num       RefCount Protocol Flags    Type St Inode Path\n"
    for bound, found in ((f"{path}.4242.tmp", True), (str(path), True), (f"{path}.x.tmp", False),
                         (f"{path}-1.sock", False)):
        table.write_text(header + f"0000000000000000: 00000002 00000000 00010000 0005 01 1234 {bound}\n")
        assert (run.find_isostackd(str(path), str(table)) is None) == found, bound

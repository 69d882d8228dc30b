"""The process that owns the testbed's libvirt connection while the guests run.

libvirt's embedded driver lives inside one process. A second process that opens the same root
"reconnects" to the running QEMUs, and with `cgroup_controllers = [ ]` (which we need, since the
machine's cgroup tree is not ours) that reconnect fails and libvirt stops the guest. So the
testbed keeps exactly one process with the connection open, from `testbed up` to `testbed down`,
and the CLI talks to it over a Unix socket with one JSON object per line:

    {"cmd": "status"}  ->  {"ok": true, "domains": {"iso-a": "running", ...}}
    {"cmd": "down"}    ->  {"ok": true, "stopped": [...]}   (then the supervisor exits)

It works the same for any libvirt URI, so a lab's `qemu+ssh://` host is handled alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed import procs

SOCKET_NAME = "testbed.sock"
DOMAINS_FILE = "domains.json"  # [{"name": ..., "xml": ...}] written by `testbed up`
READY_FILE = "supervisor.ready"  # its PID, written once it serves
PID_FILE = "supervisor.pid"  # its PID, written by `spawn` as soon as it exists (before the guests start)
MAX_REQUEST = 4096

log = logging.getLogger("testbed.supervisor")


class SupervisorError(RuntimeError):
    pass


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def request(state_dir: Path, cmd: str, timeout_s: float = 60.0) -> dict:
    """Send one command to the supervisor of `state_dir` and return its answer."""
    path = socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise SupervisorError(f"no testbed supervisor is listening on {path}") from None
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data)
    except ValueError:
        raise SupervisorError(f"bad answer from the testbed supervisor: {data[:200]!r}") from None
    if not answer.get("ok"):
        raise SupervisorError(answer.get("error", "the testbed supervisor refused the request"))
    return answer


def is_supervisor_of(pid: int, state_dir: Path) -> bool:
    """Whether `pid` is a `python -m testbed.supervisor --state-dir <state_dir>` (guards against recycled PIDs)."""
    return b"testbed.supervisor" in procs.cmdline(pid) and procs.runs_with(pid, b"--state-dir", state_dir)


def parse_request(line: bytes) -> str:
    """The command of one request line; ValueError with a reason for anything else."""
    if len(line) > MAX_REQUEST:
        raise ValueError("request too long")
    try:
        msg = json.loads(line)
    except ValueError:
        raise ValueError("request is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("cmd"), str):
        raise ValueError('request must be an object with a string "cmd"')
    if msg["cmd"] not in ("status", "down"):
        raise ValueError(f"unknown command {msg['cmd']!r} (known: status, down)")
    return msg["cmd"]


class Supervisor:
    def __init__(self, state_dir: Path, uri: str) -> None:
        from testbed import virt

        self.virt = virt
        self.state_dir = state_dir
        self.domains = json.loads((state_dir / DOMAINS_FILE).read_text())
        self.conn = virt.connect(uri)
        self.stopping = False

    def start_domains(self) -> None:
        started = []
        try:
            for d in self.domains:
                if self.stopping:  # SIGTERM while starting: its down() stopped what runs, start no more
                    break
                self.virt.destroy_and_undefine(self.conn, d["name"])
                self.virt.start_domain(self.conn, d["xml"])
                started.append(d["name"])
                log.info("started %s", d["name"])
        except Exception:
            for name in started:
                self.virt.destroy_and_undefine(self.conn, name)
            raise

    def status(self) -> dict:
        states = {}
        for d in self.domains:
            dom = self.virt.find_domain(self.conn, d["name"])
            states[d["name"]] = "running" if dom is not None and dom.isActive() else "stopped"
        return {"ok": True, "domains": states}

    def down(self) -> dict:
        stopped = [d["name"] for d in self.domains if self.virt.destroy_and_undefine(self.conn, d["name"])]
        log.info("stopped %s", ", ".join(stopped) or "nothing")
        self.stopping = True
        return {"ok": True, "stopped": stopped}

    def handle(self, line: bytes) -> dict:
        try:
            cmd = parse_request(line)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        try:
            return self.status() if cmd == "status" else self.down()
        except self.virt.VirtError as e:
            return {"ok": False, "error": str(e)}

    def serve(self) -> None:
        path = socket_path(self.state_dir)
        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(str(path))
            srv.listen(8)
            srv.settimeout(0.5)
            (self.state_dir / READY_FILE).write_text(f"{os.getpid()}\n")
            while not self.stopping:
                try:
                    client, _ = srv.accept()
                except TimeoutError:
                    continue
                with client:
                    client.settimeout(5.0)
                    try:
                        line = client.recv(MAX_REQUEST + 1).split(b"\n", 1)[0]
                        client.sendall(json.dumps(self.handle(line)).encode() + b"\n")
                    except OSError as e:
                        log.warning("client connection: %s", e)
        path.unlink(missing_ok=True)
        self.conn.close()


def spawn(state_dir: Path, uri: str, timeout_s: float = 60.0) -> int:
    """Start the supervisor detached; return its PID once the domains are started."""
    ready = state_dir / READY_FILE
    ready.unlink(missing_ok=True)
    logfile = state_dir / "supervisor.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.supervisor", "--state-dir", str(state_dir), "--uri", uri],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
    (state_dir / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            return proc.pid
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
            raise SupervisorError("the testbed supervisor failed: " + " | ".join(tail))
        time.sleep(0.1)
    proc.terminate()
    raise SupervisorError(f"the testbed supervisor did not start the guests within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.supervisor",
                                     description="Own the testbed's libvirt connection (started by `testbed up`).")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--uri", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    sup = Supervisor(Path(args.state_dir), args.uri)

    def on_term(_sig: int, _frame: object) -> None:
        sup.down()

    signal.signal(signal.SIGTERM, on_term)
    try:
        sup.start_domains()
    except Exception as e:  # reported through the log file that `spawn` shows
        log.error("%s", e)
        return 1
    sup.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

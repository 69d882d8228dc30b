"""DPDK testpmd as a real vhost-user front-end (virtio-user): command line, stdin script, output parsing.

Parsing is apart from process I/O (Flent style) so it can be tested on canned output. Used by the real-peer
test and by `vhea bench` (bench_dpdk).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

_NIC_BLOCK = re.compile(r"#+ NIC statistics for port (\d+)\s+#+(.*?)#{10,}", re.S)
_FIELD = re.compile(r"(RX-packets|RX-missed|RX-bytes|RX-errors|RX-nombuf|TX-packets|TX-errors|TX-bytes):\s+(\d+)")


@dataclass(frozen=True)
class PortStats:
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    rx_missed: int = 0
    tx_errors: int = 0


def parse_port_stats(output: str) -> dict[int, PortStats]:
    """The last `show port stats all` block of each port in testpmd's output."""
    out: dict[int, PortStats] = {}
    for m in _NIC_BLOCK.finditer(output):
        fields = {k: int(v) for k, v in _FIELD.findall(m.group(2))}
        out[int(m.group(1))] = PortStats(
            rx_packets=fields.get("RX-packets", 0),
            rx_bytes=fields.get("RX-bytes", 0),
            tx_packets=fields.get("TX-packets", 0),
            tx_bytes=fields.get("TX-bytes", 0),
            rx_missed=fields.get("RX-missed", 0),
            tx_errors=fields.get("TX-errors", 0),
        )
    return out


def available() -> str | None:
    return shutil.which("dpdk-testpmd")


def command(socket_path: str, prefix: str, main_lcore: int, queues: int = 1, timeout_s: int = 60,
            lcores: str = "0,1") -> list[str]:
    """A virtio-user port on `socket_path`, no hugepages, no PCI, under `timeout` so it can never linger."""
    return [
        "timeout", "--kill-after=5", str(timeout_s),
        "dpdk-testpmd", "-l", lcores, "--main-lcore", str(main_lcore), "--no-huge", "-m", "1024", "--no-pci",
        "--file-prefix", prefix, "--vdev", f"net_virtio_user0,path={socket_path},queues={queues}",
        "--", "-i", f"--rxq={queues}", f"--txq={queues}",
    ]


class Testpmd:
    """One interactive testpmd process, fed commands on stdin."""

    def __init__(self, cmd: list[str], log_path: str, prefix: str | None = None) -> None:
        self.log_path = log_path
        #: the EAL --file-prefix, if the caller gave one: names the runtime directory to remove after it
        self.prefix = prefix
        self._log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
                                     text=True)

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        for line in lines:
            self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def quit(self, timeout: float = 20) -> str:
        try:
            self.send("quit")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # SIGTERM to `timeout`, which passes it on to testpmd
            self.proc.wait(10)
        self._log.close()
        return self.output()

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()

"""Device-model restart under real guests: the testbed's QEMUs are vhost-user clients with `reconnect`
(guest.xml.j2: <reconnect enabled='yes' timeout='1'/>). Kill `vhea serve` (SIGKILL, no clean shutdown) while
a ping and a TCP connection run between the guests, start it again with the same arguments, and check that
QEMU reconnects, traffic resumes and the TCP connection survives the gap. Then `testbed down` leaves nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from vm_helpers import qemu_pids

from testbed import devicemodel
from testbed.devicemodel import pid_alive

pytestmark = pytest.mark.vm

A_IP, B_IP = "10.10.0.1", "10.10.0.2"

#: an echo server (iso-b) and a client (iso-a) that sends a numbered line every 50 ms on ONE connection for
#: `seconds`, checks every echo, and prints a JSON summary with the longest time without an echo
TCP_ECHO = r"""
import json, os, socket, sys, time
if sys.argv[1] == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(sys.argv[2]))); ls.listen(1)
    c, _ = ls.accept()
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    sys.exit(0)
dst, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((dst, port), timeout=5)
s.settimeout(0.05)
sent = echoed = 0
buf = b""
err = None
start = last = time.monotonic()
gap = 0.0
next_send = start
try:
    while time.monotonic() - start < seconds or (echoed < sent and time.monotonic() - start < seconds + 60):
        now = time.monotonic()
        if now >= next_send and now - start < seconds:
            s.sendall(b"%08d\n" % sent); sent += 1; next_send = now + 0.05
        try:
            d = s.recv(65536)
            if not d:
                err = "closed by peer"; break
            buf += d
        except socket.timeout:
            pass
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if int(line) != echoed:
                err = f"echo {line!r} out of order, expected {echoed}"; break
            echoed += 1
            now = time.monotonic(); gap = max(gap, now - last); last = now
        if err:
            break
        with open("/tmp/echo.progress.tmp", "w") as f:  # replaced whole: a reader never sees it empty
            f.write(f"{sent} {echoed}\n")
        os.replace("/tmp/echo.progress.tmp", "/tmp/echo.progress")
except OSError as e:
    err = f"{type(e).__name__}: {e}"
print(json.dumps({"sent": sent, "echoed": echoed, "max_gap_s": round(gap, 2), "error": err}))
"""


def wait_until(cond, timeout: float, step: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def test_device_model_restart_resumes_traffic_and_tcp_survives(testbed):
    state, tpath, ssh = testbed.state, testbed.topology_path, testbed.ssh

    def vhea_stats() -> dict:
        return devicemodel.stats(Path(topo.device_model.socket_dir))

    dm_pids: list[int] = []
    topo = testbed.topology()
    dm = topo.device_model
    dm_pids.append(dm.pid)
    for g in ("iso-a", "iso-b"):
        ssh(g, "cat > /tmp/echo.py", stdin=TCP_ECHO)
    ssh("iso-a", f"ping -c 2 -W 5 {B_IP} >/dev/null")
    ssh("iso-b", "setsid nohup python3 /tmp/echo.py server 7007 >/dev/null 2>&1 </dev/null & sleep 1")
    ssh("iso-a", f"rm -f /tmp/echo.out /tmp/echo.progress; setsid nohup sh -c "
                 f"'python3 /tmp/echo.py client {B_IP} 7007 45 >/tmp/echo.out 2>&1' >/dev/null 2>&1 </dev/null &"
                 " sleep 1")

    def progress() -> tuple[int, int]:
        out = ssh("iso-a", "cat /tmp/echo.progress 2>/dev/null || echo 0 0").stdout.split()
        return int(out[0]), int(out[1])

    assert wait_until(lambda: progress()[1] >= 20, 60), "the TCP echo did not get going"
    before = vhea_stats()["ports"]
    assert all(before[p]["connected"] for p in dm.ports)

    # kill the device model the hard way: no clean shutdown, its sockets stay behind
    assert devicemodel.is_vhea(dm.pid)
    os.kill(dm.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    assert wait_until(lambda: not pid_alive(dm.pid), 10, 0.1)
    time.sleep(2.0)  # the gap: guests keep sending into rings nobody serves
    echoed_in_gap = progress()[1]
    assert all(pid_alive(p) for p in qemu_pids(state)) and len(qemu_pids(state)) == 2

    # the same arguments as `testbed up` gave it (vhea.log shows them too)
    new_pid = devicemodel.start(Path(dm.socket_dir), dm.ports, int(topo.options.get("queues", 1)), Path(dm.log))
    dm_pids.append(new_pid)
    topo.device_model.pid = new_pid
    topo.save(tpath)  # so that `testbed down` stops the new one
    t_start = time.monotonic()

    # QEMU reconnects (reconnect=1) and replays the whole handshake; both ports come back
    assert wait_until(lambda: all(p["connected"] for p in vhea_stats()["ports"].values()), 30), vhea_stats()
    t_connected = time.monotonic()
    # traffic resumes: the echo makes progress again
    assert wait_until(lambda: progress()[1] > echoed_in_gap + 20, 60), "no echo after the restart"
    t_resumed = time.monotonic()
    after = vhea_stats()["ports"]
    assert all(after[p]["from_guest_frames"] > 0 and after[p]["to_guest_frames"] > 0 for p in dm.ports)
    log = Path(dm.log).read_text(errors="replace")
    assert re.search(r"ring \d+ resumes at used idx \d+", log), log[-3000:]

    # the TCP connection survived: one connection, every line echoed in order, no error
    res = wait_until(lambda: ssh("iso-a", "cat /tmp/echo.out 2>/dev/null").stdout.strip(), 120, 2)
    summary = json.loads(res.splitlines()[-1])
    assert summary["error"] is None, summary
    assert summary["sent"] > 400 and summary["echoed"] == summary["sent"], summary
    assert summary["max_gap_s"] >= 2.0  # the connection really crossed the gap
    # and a fresh ping crosses the new device model
    ping = ssh("iso-a", f"ping -c 3 -W 5 {B_IP}").stdout
    loss = re.search(r"(\d+) packets transmitted, (\d+) received", ping)
    assert loss and int(loss.group(2)) == 3, ping
    print(f"\nlifecycle: kill -> restart {t_start - t_kill:.1f} s, -> QEMU reconnected "
          f"{t_connected - t_kill:.1f} s, -> echo flowing {t_resumed - t_kill:.1f} s after the kill; "
          f"TCP: {summary}; ping: {loss.group(0)}")
    testbed.down()  # the fixture takes it down too, whatever happened; here the test checks what is left
    assert not tpath.exists()
    assert not any(pid_alive(p) for p in dm_pids)
    assert qemu_pids(state) == []


def _qemu_server(path: str, log: Path) -> subprocess.Popen:
    """A QEMU whose vhost-user chardev listens (server=on: libvirt <source mode='server'>); no guest needed
    for the handshake it sends on connect."""
    cmd = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "128",
           "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-numa", "node,memdev=mem",
           "-chardev", f"socket,id=c0,path={path},server=on,wait=off",
           "-netdev", "vhost-user,id=n0,chardev=c0", "-device", "virtio-net-pci,netdev=n0",
           "-display", "none", "-monitor", "none", "-serial", "none", "-S"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def test_client_role_against_qemu_server_either_side_restarts(tmp_path, sockdir, processes):
    import shutil

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64")
    path = os.path.join(sockdir, "a.sock")
    vlog = tmp_path / "vhea.log"
    vhea_cmd = devicemodel.vhea_command() + ["serve", "--socket-dir", sockdir, "--ports", "a", "--connect"]

    def start(cmd_or_proc):
        processes.append(cmd_or_proc)
        return cmd_or_proc

    def vhea() -> subprocess.Popen:
        with open(vlog, "ab") as out:
            return start(subprocess.Popen(vhea_cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out))

    def connected() -> bool:
        try:
            return devicemodel.stats(Path(sockdir))["ports"]["a"]["connected"]
        except devicemodel.DeviceModelError:
            return False

    v = vhea()
    assert wait_until(lambda: "cannot connect" in vlog.read_text(), 10, 0.2)  # QEMU not there yet: retries
    q = start(_qemu_server(path, tmp_path / "qemu1.log"))
    assert wait_until(connected, 20), vlog.read_text()
    q.terminate()  # the front-end goes away ...
    q.wait(10)
    assert wait_until(lambda: not connected(), 10)
    assert wait_until(lambda: "reconnecting to" in vlog.read_text(), 10), vlog.read_text()
    q = start(_qemu_server(path, tmp_path / "qemu2.log"))  # ... and comes back: vhea finds it
    assert wait_until(connected, 20), vlog.read_text()
    v.kill()  # now the back-end dies; QEMU (the server) waits for a new connection
    v.wait(10)
    assert q.poll() is None
    vhea()
    assert wait_until(connected, 20), vlog.read_text()
    text = vlog.read_text()
    assert text.count("connected to the front-end") == 3, text

"""`vhea link down|up` under real guests: link down closes port a's vhost-user connection, QEMU
(net/vhost-user.c, chardev closed -> qmp_set_link false) sets the guest NIC's link down, so iso-a's data NIC
loses carrier and a ping to iso-b fails; link up serves QEMU's next reconnect (reconnect=1), the handshake is
replayed, carrier comes back, ping works again and a TCP connection opened before survives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_vhea_lifecycle_vm import TCP_ECHO, wait_until
from vm_helpers import BIN, REPO, qemu_pids, run

from testbed import devicemodel
from testbed.devicemodel import pid_alive

pytestmark = pytest.mark.vm

A_IP, B_IP = "10.10.0.1", "10.10.0.2"
DATA_MAC_A = "52:54:00:10:00:01"


def test_link_down_takes_the_guests_carrier_and_up_brings_it_back(testbed):
    state, env, tpath = testbed.state, testbed.env, testbed.topology_path

    def ssh(guest: str, cmd: str, timeout: float = 60, stdin: str | None = None, check: bool = True):
        return testbed.ssh(guest, cmd, timeout, stdin, check)

    def vhea(*args: str) -> str:
        return run([str(BIN / "vhea"), *args, "--socket-dir", dm.socket_dir], 30, env).stdout

    dm_pid = None
    topo = testbed.topology()
    dm = topo.device_model
    dm_pid = dm.pid
    iface = ssh("iso-a", f"grep -il {DATA_MAC_A} /sys/class/net/*/address").stdout.strip().split("/")[-2]

    def carrier() -> str:
        out = ssh("iso-a", f"cat /sys/class/net/{iface}/carrier /sys/class/net/{iface}/operstate 2>&1").stdout
        return " ".join(out.split())

    assert carrier() == "1 up"
    for g in ("iso-a", "iso-b"):
        ssh(g, "cat > /tmp/echo.py", stdin=TCP_ECHO)
    ssh("iso-a", f"ping -c 2 -W 5 {B_IP} >/dev/null")
    ssh("iso-b", "setsid nohup python3 /tmp/echo.py server 7008 >/dev/null 2>&1 </dev/null & sleep 1")
    ssh("iso-a", f"rm -f /tmp/echo.out /tmp/echo.progress; setsid nohup sh -c "
                 f"'python3 /tmp/echo.py client {B_IP} 7008 25 >/tmp/echo.out 2>&1' >/dev/null 2>&1 </dev/null &"
                 " sleep 1")

    def carrier_watch(want: str) -> subprocess.Popen:
        """A poller in the guest (every 20 ms) that says 'ready', then a line when carrier becomes `want`:
        the time the host reads that line bounds how late the guest saw the change."""
        loop = (f"echo ready; while [ \"$(cat /sys/class/net/{iface}/carrier 2>/dev/null)\" != {want} ]; "
                "do sleep 0.02; done; echo changed")
        w = subprocess.Popen([str(BIN / "testbed"), "ssh", "iso-a", loop], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        return w

    def changed_after(w: subprocess.Popen, t0: float, timeout: float = 15) -> float:
        try:
            line = w.stdout.readline() if w.wait(timeout) is not None else ""
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
            raise AssertionError(f"carrier did not change within {timeout} s: {carrier()}") from None
        assert line.strip() == "changed"
        return time.monotonic() - t0

    def progress() -> int:
        # the client rewrites the file every turn: a read can find it empty, so read until it is not
        out = ssh("iso-a", "for i in 1 2 3 4 5 6 7 8 9 10; do x=$(cat /tmp/echo.progress 2>/dev/null); "
                           "[ -n \"$x\" ] && break; sleep 0.05; done; echo ${x:-0 0}").stdout.split()
        return int(out[1]) if len(out) == 2 else 0

    assert wait_until(lambda: progress() >= 10, 30), "the TCP echo did not get going"

    w = carrier_watch("0")
    t_down = time.monotonic()
    out = vhea("link", "down", "--port", "a")
    assert "link down (vhost-user connection closed" in out, out
    no_carrier_s = changed_after(w, t_down)
    assert wait_until(lambda: carrier() == "0 down", 5, 0.2), carrier()
    ping = ssh("iso-a", f"ping -c 2 -W 1 {B_IP}", check=False)
    assert ping.returncode != 0, ping.stdout
    time.sleep(2.5)  # QEMU retries every second; each retry is closed unserved: the link stays down
    assert carrier() == "0 down"
    st = devicemodel.stats(Path(dm.socket_dir))["ports"]
    assert st["a"]["link"] == "down" and st["a"]["connection"] == "closed: link down", st["a"]
    assert st["a"]["refused_link_down"] >= 1, st["a"]
    assert st["b"]["connected"] and st["b"]["link"] == "up"
    echoed_down = progress()

    w = carrier_watch("1")
    t_up = time.monotonic()
    out = vhea("link", "up", "--port", "a")
    assert "link up" in out, out
    assert wait_until(lambda: devicemodel.stats(Path(dm.socket_dir))["ports"]["a"]["connected"], 15, 0.05)
    t_connected = time.monotonic()
    carrier_s = changed_after(w, t_up)
    assert wait_until(lambda: carrier() == "1 up", 5, 0.2), carrier()
    ping = ssh("iso-a", f"ping -c 3 -W 5 {B_IP}").stdout
    loss = re.search(r"(\d+) packets transmitted, (\d+) received", ping)
    assert loss and int(loss.group(2)) == 3, ping
    assert wait_until(lambda: progress() > echoed_down + 10, 30), "no echo after link up"

    res = wait_until(lambda: ssh("iso-a", "cat /tmp/echo.out 2>/dev/null").stdout.strip(), 90, 2)
    summary = json.loads(res.splitlines()[-1])
    assert summary["error"] is None, summary
    assert summary["sent"] > 100 and summary["echoed"] == summary["sent"], summary
    assert summary["max_gap_s"] >= 2.0  # the connection really crossed the link-down gap
    assert devicemodel.stats(Path(dm.socket_dir))["ports"]["a"]["link_changes"] == 2
    print(f"\nlink: down -> no carrier in the guest {no_carrier_s:.2f} s; up -> QEMU reconnected "
          f"{t_connected - t_up:.2f} s, -> carrier {carrier_s:.2f} s (both incl. the vhea CLI's start); "
          f"TCP: {summary}; ping: {loss.group(0)}")
    testbed.down()  # the fixture takes it down too, whatever happened; here the test checks what is left
    assert not tpath.exists()
    assert dm_pid is None or not pid_alive(dm_pid)
    assert qemu_pids(state) == []


def test_client_role_link_down_against_a_qemu_server(tmp_path, sockdir, processes):
    """vhea --connect against a QEMU that listens (server=on): link down closes the connection and vhea does
    not reconnect while down (QEMU keeps listening); link up connects again."""
    import shutil

    from test_vhea_lifecycle_vm import _qemu_server

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64")
    vlog = tmp_path / "vhea.log"

    def port_a() -> dict:
        try:
            return devicemodel.stats(Path(sockdir))["ports"]["a"]
        except devicemodel.DeviceModelError:
            return {}

    processes.append(_qemu_server(os.path.join(sockdir, "a.sock"), tmp_path / "qemu.log"))
    vhea_cmd = devicemodel.vhea_command() + ["serve", "--socket-dir", sockdir, "--ports", "a", "--connect"]
    with open(vlog, "ab") as out:
        processes.append(subprocess.Popen(vhea_cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out))
    assert wait_until(lambda: port_a().get("connected"), 20, 0.2), vlog.read_text()
    out = run([str(BIN / "vhea"), "link", "down", "--port", "a", "--socket-dir", sockdir], 30).stdout
    assert "link down (vhost-user connection closed" in out
    time.sleep(3.0)  # three reconnect intervals
    st = port_a()
    assert st["connection"] == "closed: link down" and not st["connected"], st
    assert processes[0].poll() is None  # QEMU is still there, listening
    assert vlog.read_text().count("connected to the front-end") == 1
    run([str(BIN / "vhea"), "link", "up", "--port", "a", "--socket-dir", sockdir], 30)
    assert wait_until(lambda: port_a().get("connected"), 10, 0.1), vlog.read_text()
    assert vlog.read_text().count("connected to the front-end") == 2

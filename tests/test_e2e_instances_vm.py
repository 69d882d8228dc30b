"""Two isostackd instances in a real guest (kernel 6.1, virtio-net with 2 queue pairs, TCG): connections from
the other guest are accepted by the instance that owns their rx queue, and active opens pick a source port
whose Toeplitz hash puts their rx queue on the socket's instance (the SYN-ACK is processed on its CPU).

Brings up its own testbed (`testbed up --queues 2` in a tmp state dir), uploads isostack-guest/isostack to
/tmp/rt in both guests, and takes the testbed down at the end.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time

import pytest
from vm_helpers import BIN, REPO, run

pytestmark = pytest.mark.vm
GUEST_SRC = REPO / "isostack-guest"
N = 16

SERVER = r"""
import json, sys
sys.path.insert(0, "/tmp/rt")
from isostack.frontend import Stack
from isostack import rss
st = Stack()
cl = rss.Classifier.from_file()
srv = st.socket()
srv.bind(("0.0.0.0", 5555))
srv.listen(64)
srv.settimeout(120)
print(json.dumps({"ready": [i.id for i in st.instances], "busy_poll": st.info.get("busy_poll")}), flush=True)
rows = []
for _ in range(int(sys.argv[1])):
    a, peer = srv.accept()
    rows.append({"instance": a.instance, "rx_cpu": a.rx_cpu,
                 "queue": cl.queue_for_connection("10.10.0.2", 5555, peer[0], peer[1])})
    a.sendall(b"%d" % a.instance)
    a.close()
print(json.dumps({"rows": rows}), flush=True)
"""

CLIENT = r"""
import socket, sys, time
for i in range(int(sys.argv[1])):
    for _ in range(100):
        try:
            c = socket.create_connection(("10.10.0.2", 5555), timeout=20)
            break
        except ConnectionRefusedError:
            time.sleep(0.2)
    c.recv(4)
    c.close()
"""

ECHO = r"""
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 5556)); srv.listen(64)
def echo(c):
    while d := c.recv(100):
        c.sendall(d)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

ACTIVE = r"""
import json, sys
sys.path.insert(0, "/tmp/rt")
from isostack.frontend import Stack
st = Stack()
rows = []
for i in range(int(sys.argv[1])):
    s = st.create_connection(("10.10.0.1", 5556), timeout=20)
    s.sendall(b"hi")
    assert s.recv(2) == b"hi"
    rows.append({"instance": s.instance, "rx_queue": s.rx_queue, "rx_cpu": s.rx_cpu})
    s.close()
print(json.dumps({"rows": rows}), flush=True)
"""


def package() -> bytes:
    """The isostack folder as a tar, with the C parts that installing the project built (the guests have none)."""
    folder = GUEST_SRC / "isostack"
    assert (folder / "_atomics.so").exists() and list(folder.glob("_fastpath*.so")), \
        f"isostack's native parts are not built in {folder}: run `make native`"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, "isostack", filter=lambda t: None if "__pycache__" in t.name else t)
    return buf.getvalue()


@pytest.fixture(scope="module")
def testbed_up_args() -> list[str]:
    return ["--queues", "2"]


@pytest.fixture(scope="module")
def bed(testbed):
    """The shared testbed with 2 queue pairs and the isostack package unpacked in /tmp/rt of both guests."""
    tar = package()
    for g in ("iso-a", "iso-b"):
        unpack = "rm -rf /tmp/rt && mkdir -p /tmp/rt && tar -C /tmp/rt -xf -"
        subprocess.run([str(BIN / "testbed"), "ssh", g, unpack], input=tar, env=testbed.env, check=True, timeout=120,
                       capture_output=True, cwd=REPO)
    return testbed.env


def ssh(env, guest, cmd, timeout=180, stdin=None):
    return run([str(BIN / "testbed"), "ssh", guest, cmd], timeout, env, True, stdin)


def last_json(text: str, key: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{") and key in line:
            return json.loads(line)
    raise AssertionError(f"no {key} line in {text[-2000:]}")


@pytest.fixture(scope="module")
def instances(bed):
    """isostackd instance k on vCPU k owning queue pair k of eth0 (placement of its IRQs, RPS, XPS)."""
    ssh(bed, "iso-b", "for k in 0 1; do PYTHONPATH=/tmp/rt nohup python3 -m isostack.dispatcher --instance $k "
                      "--cpu $k --queues $k --interfaces eth0 --allow-shared >/tmp/isod$k.log 2>&1 & "
                      "echo $! >/tmp/isod$k.pid; done")
    deadline = time.monotonic() + 60
    want = ["isostackd-1.sock", "isostackd.sock"]
    while ssh(bed, "iso-b", "ls /run/isostack 2>/dev/null || true").stdout.split() != want:
        assert time.monotonic() < deadline, ssh(bed, "iso-b", "cat /tmp/isod0.log /tmp/isod1.log").stdout
        time.sleep(1)
    yield bed
    ssh(bed, "iso-b", "kill $(cat /tmp/isod0.pid) $(cat /tmp/isod1.pid)")


def test_passive_connections_land_on_the_instance_owning_their_rx_queue(instances):
    env = instances
    ssh(env, "iso-b", "cat > /tmp/server.py", stdin=SERVER)
    ssh(env, "iso-a", "cat > /tmp/client.py", stdin=CLIENT)
    ssh(env, "iso-b", f"nohup python3 /tmp/server.py {N} >/tmp/server.out 2>&1 & echo $! >/tmp/server.pid")
    deadline = time.monotonic() + 60
    while "ready" not in ssh(env, "iso-b", "cat /tmp/server.out").stdout:
        assert time.monotonic() < deadline
        time.sleep(1)
    ssh(env, "iso-a", f"python3 /tmp/client.py {N}")
    deadline = time.monotonic() + 60
    while '"rows"' not in (out := ssh(env, "iso-b", "cat /tmp/server.out").stdout):
        assert time.monotonic() < deadline, out
        time.sleep(1)
    ready, rows = last_json(out, "ready"), last_json(out, "rows")["rows"]
    assert ready["ready"] == [0, 1]
    assert ready["busy_poll"]["socket_us"] == 50
    print(rows)
    assert {r["queue"] for r in rows} == {0, 1}, "the peer's ports should spread over both queues"
    assert [r["instance"] for r in rows] == [r["queue"] for r in rows]
    assert [r["rx_cpu"] for r in rows] == [r["queue"] for r in rows]  # queue k's IRQ and RPS are on vCPU k


def test_active_opens_pick_a_port_whose_rx_queue_is_their_instances(instances):
    env = instances
    ssh(env, "iso-a", "cat > /tmp/echo.py", stdin=ECHO)
    ssh(env, "iso-a", "nohup python3 /tmp/echo.py >/tmp/echo.out 2>&1 & echo $! >/tmp/echo.pid")
    ssh(env, "iso-b", "cat > /tmp/active.py", stdin=ACTIVE)
    try:
        time.sleep(2)
        rows = last_json(ssh(env, "iso-b", f"taskset -c 0 python3 /tmp/active.py {N}").stdout, "rows")["rows"]
    finally:
        ssh(env, "iso-a", "kill $(cat /tmp/echo.pid)")
    print(rows)
    assert sorted(r["instance"] for r in rows) == [0] * (N // 2) + [1] * (N // 2)  # round-robin
    assert [r["rx_queue"] for r in rows] == [r["instance"] for r in rows]
    assert [r["rx_cpu"] for r in rows] == [r["instance"] for r in rows]  # the SYN-ACK came in on its queue

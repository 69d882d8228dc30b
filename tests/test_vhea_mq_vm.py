"""Multi-queue classification with real guests: frames land on the rx queue the Toeplitz hash and RETA
predict, or the one a flow rule names; and what QEMU 10 lets a vhost-user guest see of RSS.

Brings up its own testbed with 2 queue pairs per guest (`testbed up --queues 2` in a subprocess, in a tmp
state dir, as tests/test_e2e_vm.py does) and takes it down. Flows go from iso-a (10.10.0.1) to iso-b
(10.10.0.2) with chosen source ports; the guests' per-queue counters (`ethtool -S`) and `vhea stats --json`
are read before and after each step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from vm_helpers import BIN, REPO, Testbed, run

from vhea.toeplitz import Toeplitz, tuple_input

pytestmark = pytest.mark.vm

RSS_PY = REPO / "isostack-guest" / "isostack" / "rss.py"
A_IP, B_IP = "10.10.0.1", "10.10.0.2"
TOEPLITZ = Toeplitz()
#: frames a guest may receive besides ours while we measure (ARP, IPv6 ND/MLD)
NOISE = 6

UDP_CLIENT = r"""
import socket, sys, time
src, dst, dport, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for sp in map(int, sys.argv[5].split(",")):
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, sp))
    for i in range(n):
        s.sendto(b"u" * 100, (dst, dport))
        time.sleep(0.002)
    s.close()
"""

TCP_PEER = r"""
import socket, sys, threading
if sys.argv[1] == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(sys.argv[2]))); ls.listen(64)
    def sink(c):
        with c:
            while c.recv(65536):
                pass
    while True:
        c, _ = ls.accept()
        threading.Thread(target=sink, args=(c,), daemon=True).start()
src, dst, dport, sports, nbytes = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
conns = []
for sp in map(int, sports.split(",")):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sp)); s.settimeout(60); s.connect((dst, dport)); conns.append(s)
for s in conns:
    s.sendall(b"z" * nbytes)
for s in conns:
    s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
"""


def rss_queue(src: str, dst: str, sport: int, dport: int, queues: int = 2) -> int:
    """The device's choice with the default key, all hash types and the round-robin RETA of 128 entries."""
    reta = [i % queues for i in range(128)]
    return reta[TOEPLITZ.hash(tuple_input(src, dst, sport, dport)) & 127]


def sports_where(pred, n: int, start: int) -> list[int]:
    out = []
    sp = start
    while len(out) < n:
        if pred(sp):
            out.append(sp)
        sp += 1
    return out


# ---- QEMU and VIRTIO_NET_F_RSS over vhost-user (no guest needed) ----------------------------------------------


def qmp(path: str, commands: list[tuple[str, dict]], timeout: float = 20.0) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting
    out = []
    for name, args in [("qmp_capabilities", {})] + commands:
        f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        f.flush()
        while True:
            r = json.loads(f.readline())
            if "return" in r or "error" in r:
                out.append(r)
                break
    s.close()
    return out[1:]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_qemu_masks_rss_but_not_hash_report_for_vhost_user(monkeypatch):
    """A back-end that offers VIRTIO_NET_F_RSS (60) and HASH_REPORT (57) to `virtio-net-pci,rss=on,hash=on`:
    QEMU's device keeps HASH_REPORT in its host features and drops RSS (it would need its eBPF steering
    program in the back-end, which only tap takes). So a vhost-user guest can never configure RSS."""
    from vhea_helpers import running_server

    import vhea.net

    base = vhea.net.offered_features
    monkeypatch.setattr(vhea.net, "offered_features", lambda qp: base(qp) | (1 << 60) | (1 << 57))
    d = tempfile.mkdtemp(prefix="vhq", dir="/tmp")
    qmp_path = os.path.join(d, "qmp.sock")
    with running_server(d, ["a"], queue_pairs=2):
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "q35,accel=tcg",
             "-m", "256", "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
             "-chardev", f"socket,id=c0,path={d}/a.sock", "-netdev", "vhost-user,id=n0,chardev=c0,queues=2",
             "-device", "virtio-net-pci,netdev=n0,id=net0,mq=on,rss=on,hash=on,vectors=6",
             "-qmp", f"unix:{qmp_path},server=on,wait=off"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            (st,) = qmp(qmp_path, [("x-query-virtio-status", {"path": "/machine/peripheral/net0/virtio-backend"})])
        finally:
            qemu.kill()
            log = qemu.communicate(timeout=10)[0]
    shutil.rmtree(d, ignore_errors=True)
    assert "return" in st, (st, log)
    host = " ".join(st["return"]["host-features"]["dev-features"])
    backend = " ".join(st["return"]["backend-features"]["dev-features"])
    assert "VIRTIO_NET_F_MQ" in host
    assert "VIRTIO_NET_F_HASH_REPORT" in host
    assert "VIRTIO_NET_F_RSS" not in host and "VIRTIO_NET_F_RSS" not in backend


# ---- real guests -----------------------------------------------------------------------------------------------


class Bed(Testbed):
    """The module's testbed (the shared `testbed` fixture's state dir) with the counters these tests compare."""

    def vhea(self, *args: str, check: bool = True):
        return run([str(BIN / "vhea"), *args[:2], "--socket-dir", self.sock_dir, *args[2:]], 30, self.env, check)

    def counts(self) -> dict:
        """Per-queue rx packets/bytes of eth0 in both guests, and the device model's rx ring frames."""
        out: dict = {}
        for g in ("iso-a", "iso-b"):
            text = self.ssh(g, "ethtool -S eth0").stdout
            out[g] = {k: int(v) for k, v in re.findall(r"(rx_queue_\d+_(?:packets|bytes)): (\d+)", text)}
        st = json.loads(run([str(BIN / "vhea"), "stats", "--socket-dir", self.sock_dir, "--json"], 30, self.env).stdout)
        for port in ("a", "b"):
            out[f"vhea-{port}"] = [q["frames"] for q in st["ports"][port]["queues"][0::2]]
            out[f"cls-{port}"] = st["ports"][port]["classifier"]
        return out


def delta(before: dict, after: dict, guest: str, what: str = "packets") -> list[int]:
    """Per-queue change; a queue the guest turned off is missing from `ethtool -S` (counted as 0)."""
    return [after[guest].get(f"rx_queue_{q}_{what}", 0) - before[guest].get(f"rx_queue_{q}_{what}", 0)
            for q in (0, 1)]


def vdelta(before: dict, after: dict, port: str) -> list[int]:
    return [x - y for x, y in zip(after[f"vhea-{port}"], before[f"vhea-{port}"], strict=True)]


@pytest.fixture(scope="module")
def testbed_up_args() -> list[str]:
    return ["--queues", "2"]


@pytest.fixture(scope="module")
def bed(testbed):
    b = Bed(testbed.state)
    for g in ("iso-a", "iso-b"):
        b.ssh(g, "ethtool -L eth0 combined 2 2>/dev/null; ethtool -l eth0 | tail -2")
        b.ssh(g, "cat > /tmp/udp.py", stdin=UDP_CLIENT)
        b.ssh(g, "cat > /tmp/tcp.py", stdin=TCP_PEER)
        b.ssh(g, "cat > /tmp/rss.py", stdin=RSS_PY.read_text())
    b.ssh("iso-a", f"ping -c 2 -W 5 {B_IP} >/dev/null")  # ARP resolved before anything is counted
    return b


def test_guest_cannot_see_rss_and_has_its_ports_settings(bed):
    feats = bed.ssh("iso-b", "cat /sys/class/net/eth0/device/features").stdout.strip()
    assert feats[22] == "1"  # VIRTIO_NET_F_MQ: the guest has 2 queue pairs
    assert feats[60] == "0"  # VIRTIO_NET_F_RSS: not offered over vhost-user
    x = bed.ssh("iso-b", "ethtool -x eth0 2>&1; ethtool -X eth0 equal 1 2>&1; true").stdout
    assert "Operation not supported" in x
    for guest, port in (("iso-a", "a"), ("iso-b", "b")):
        inside = json.loads(bed.ssh(guest, "cat /etc/isostack/classifier.json").stdout)
        host = json.loads(bed.vhea("rss", "show", "--port", port, "--json").stdout)
        assert inside["key"] == host["key"] and inside["reta"] == host["reta"] and inside["queues"] == 2
        assert inside["hash_types"] == host["hash_types"] and inside["rules"] == host["rules"]
    # the guest's stdlib predictor (isostack/rss.py) agrees with the device model's hash
    for sp in (40000, 40001, 51234):
        q = bed.ssh("iso-b", f"python3 /tmp/rss.py {A_IP} {B_IP} {sp} 5201 --file /etc/isostack/classifier.json")
        assert int(q.stdout) == rss_queue(A_IP, B_IP, sp, 5201)


def test_udp_flows_land_exactly_on_the_predicted_queues(bed):
    sports = list(range(40000, 40012))
    n = 30
    expected = [0, 0]
    for sp in sports:
        expected[rss_queue(A_IP, B_IP, sp, 9000)] += n
    assert min(expected) > 0
    before = bed.counts()
    bed.ssh("iso-a", f"python3 /tmp/udp.py {A_IP} {B_IP} 9000 {n} {','.join(map(str, sports))}")
    time.sleep(1)
    after = bed.counts()
    seen, dm = delta(before, after, "iso-b"), vdelta(before, after, "b")
    print(f"\nUDP {len(sports)} flows x {n} datagrams to iso-b: predicted {expected}, guest ethtool -S {seen}, "
          f"vhea rx rings {dm}")
    for q in (0, 1):
        assert expected[q] <= seen[q] <= expected[q] + NOISE, (q, expected, seen)
        assert abs(dm[q] - seen[q]) <= 2, (q, dm, seen)


def test_tcp_flows_follow_rss_then_a_rule(bed):
    bed.ssh("iso-b", "setsid nohup python3 /tmp/tcp.py server 5201 >/dev/null 2>&1 </dev/null & sleep 1")
    nbytes = 256 * 1024
    # flows whose data (at b) and ACKs (at a) both hash to queue q
    flows = {q: sports_where(lambda sp, q=q: rss_queue(A_IP, B_IP, sp, 5201) == q
                             and rss_queue(B_IP, A_IP, 5201, sp) == q, 4, 41000 + 1000 * q) for q in (0, 1)}
    report = []
    for q in (0, 1):
        before = bed.counts()
        bed.ssh("iso-a", f"python3 /tmp/tcp.py client {A_IP} {B_IP} 5201 {','.join(map(str, flows[q]))} {nbytes}")
        time.sleep(1)
        after = bed.counts()
        b_bytes, a_pk = delta(before, after, "iso-b", "bytes"), delta(before, after, "iso-a")
        b_pk = delta(before, after, "iso-b")
        report.append(f"RSS -> queue {q}: iso-b rx bytes per queue {b_bytes} packets {b_pk}; "
                      f"iso-a (ACKs) rx packets {a_pk}; vhea b {vdelta(before, after, 'b')}")
        assert b_bytes[q] >= 4 * nbytes and b_pk[1 - q] <= NOISE, report[-1]
        assert a_pk[q] >= 4 * 3 and a_pk[1 - q] <= NOISE, report[-1]

    # a rule on port b: every TCP flow to port 5201 goes to queue 1, whatever its hash says
    r = json.loads(bed.vhea("rule", "add", "--port", "b", "--proto", "tcp", "--dport", "5201", "--queue", "1",
                            "--json").stdout)
    rule_flows = sports_where(lambda sp: rss_queue(A_IP, B_IP, sp, 5201) == 0, 4, 43000)
    before = bed.counts()
    bed.ssh("iso-a", f"python3 /tmp/tcp.py client {A_IP} {B_IP} 5201 {','.join(map(str, rule_flows))} {nbytes}")
    time.sleep(1)
    after = bed.counts()
    b_bytes, b_pk = delta(before, after, "iso-b", "bytes"), delta(before, after, "iso-b")
    report.append(f"rule tcp dport 5201 -> queue 1 (RSS says 0): iso-b rx bytes {b_bytes} packets {b_pk}")
    print("\n" + "\n".join(report))
    assert b_bytes[1] >= 4 * nbytes and b_pk[0] <= NOISE, report[-1]
    rules = json.loads(bed.vhea("rule", "list", "--port", "b", "--json").stdout)["rules"]["b"]
    assert rules[0]["hits"] == after["cls-b"]["rule"] - before["cls-b"]["rule"] and rules[0]["hits"] >= 4 * 3

    # `testbed up` on the running testbed hands the new rule to the guest; its predictor follows it
    run([str(BIN / "testbed"), "up", "--queues", "2"], timeout=300, env=bed.env)
    q = bed.ssh("iso-b", f"python3 /tmp/rss.py {A_IP} {B_IP} {rule_flows[0]} 5201")
    assert int(q.stdout) == 1
    bed.vhea("rule", "del", "--port", "b", "--id", str(r["rule"]["id"]))


def test_one_queue_pair_in_the_guest_moves_everything_to_queue_0(bed):
    """`ethtool -L eth0 combined 1`: QEMU disables pair 1 (SET_VRING_ENABLE 0); the device falls back to 0."""
    bed.ssh("iso-b", "ethtool -L eth0 combined 1")
    try:
        sports = sports_where(lambda sp: rss_queue(A_IP, B_IP, sp, 9000) == 1, 4, 44000)
        before = bed.counts()
        bed.ssh("iso-a", f"python3 /tmp/udp.py {A_IP} {B_IP} 9000 20 {','.join(map(str, sports))}")
        time.sleep(1)
        after = bed.counts()
        seen = delta(before, after, "iso-b")
        fallback = after["cls-b"]["not_ready_fallback"] - before["cls-b"]["not_ready_fallback"]
        print(f"\ncombined 1: 80 datagrams RSS-bound for queue 1 -> guest queues {seen}, vhea rx rings "
              f"{vdelta(before, after, 'b')}, vhea fallbacks {fallback}")
        dm = vdelta(before, after, "b")
        assert 80 <= seen[0] <= 80 + NOISE and seen[1] == 0 and fallback >= 80
        assert 80 <= dm[0] <= 80 + NOISE and dm[1] == 0
    finally:
        bed.ssh("iso-b", "ethtool -L eth0 combined 2")


def test_iperf3_parallel_streams_split_as_predicted(bed):
    """iperf3 -P 8 from iso-a to iso-b: each stream's bytes arrive on the queue its ephemeral port hashes to."""
    bed.ssh("iso-b", "pkill -x iperf3; iperf3 -s -D -p 5301; sleep 1", check=False)
    before = bed.counts()
    out = bed.ssh("iso-a", f"iperf3 -c {B_IP} -p 5301 -P 8 -t 3 -J", timeout=120).stdout
    time.sleep(1)
    after = bed.counts()
    res = json.loads(out)
    ports = {c["socket"]: c["local_port"] for c in res["start"]["connected"]}
    expected = [0, 0]
    for st in res["end"]["streams"]:
        # what the server received: the sender's count includes bytes still in flight when the test ended
        expected[rss_queue(A_IP, B_IP, ports[st["sender"]["socket"]], 5301)] += st["receiver"]["bytes"]
    seen = delta(before, after, "iso-b", "bytes")
    total_e, total_s = sum(expected), sum(seen)
    share_e = [e / total_e for e in expected]
    share_s = [x / total_s for x in seen]
    print(f"\niperf3 -P 8: stream ports {sorted(ports.values())}; payload bytes by predicted queue {expected}; "
          f"iso-b rx bytes per queue {seen} (shares predicted {share_e[0]:.3f}/{share_e[1]:.3f}, "
          f"seen {share_s[0]:.3f}/{share_s[1]:.3f})")
    # Wire bytes are payload + headers + retransmits, 18-23 % more here, and that overhead differs between the
    # queues by a few percent under load (segment sizes, losses). One stream on the wrong queue moves its whole
    # share (about 1/8 of the bytes) from one queue to the other, so a 6 % tolerance still catches it. (The exact
    # per-flow placement is checked with counted UDP datagrams below.)
    assert total_s >= total_e
    for q in (0, 1):
        assert abs(share_e[q] - share_s[q]) < 0.06, (share_e, share_s)
    bed.ssh("iso-b", "pkill -x iperf3", check=False)


def test_ipv6_udp_flows_land_exactly_on_the_predicted_queues(bed):
    a6, b6 = "fd00:10::1", "fd00:10::2"
    bed.ssh("iso-a", f"ip -6 addr replace {a6}/64 dev eth0 nodad")
    bed.ssh("iso-b", f"ip -6 addr replace {b6}/64 dev eth0 nodad")
    bed.ssh("iso-a", f"ping -6 -c 2 -W 5 {b6} >/dev/null")  # neighbour discovery done before we count
    sports = list(range(45000, 45010))
    n = 20
    expected = [0, 0]
    for sp in sports:
        expected[rss_queue(a6, b6, sp, 9000)] += n
    before = bed.counts()
    bed.ssh("iso-a", f"python3 /tmp/udp.py {a6} {b6} 9000 {n} {','.join(map(str, sports))}")
    time.sleep(1)
    after = bed.counts()
    seen, dm = delta(before, after, "iso-b"), vdelta(before, after, "b")
    print(f"\nIPv6 UDP {len(sports)} flows x {n} datagrams to iso-b: predicted {expected}, guest ethtool -S {seen}, "
          f"vhea rx rings {dm}")
    for q in (0, 1):
        assert expected[q] <= seen[q] <= expected[q] + NOISE, (q, expected, seen)
        assert abs(dm[q] - seen[q]) <= 2, (q, dm, seen)


def iperf3_mbps(bed, seconds: int = 4) -> float:
    out = bed.ssh("iso-a", f"iperf3 -c {B_IP} -p 5301 -P 2 -t {seconds} -J", timeout=120).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def rx_frames_calls(bed, port: str = "b") -> list[tuple[int, int]]:
    st = json.loads(run([str(BIN / "vhea"), "stats", "--socket-dir", bed.sock_dir, "--json"], 30, bed.env).stdout)
    return [(q["frames"], q["calls"]) for q in st["ports"][port]["queues"][0::2]]


def test_pacing_holds_a_guest_to_the_configured_rate(bed):
    bed.ssh("iso-b", "pkill -x iperf3; iperf3 -s -D -p 5301; sleep 1", check=False)
    bed.vhea("rate", "set", "--port", "a", "--gbps", "0.05")
    try:
        mbps = iperf3_mbps(bed)
    finally:
        bed.vhea("rate", "set", "--port", "a", "--off")
    st = json.loads(run([str(BIN / "vhea"), "stats", "--socket-dir", bed.sock_dir, "--json"], 30, bed.env).stdout)
    print(f"\npacing port a at 50 Mb/s: iperf3 {mbps:.1f} Mbit/s, pacer waits {st['ports']['a']['pacing']['waits']}")
    assert 35 <= mbps <= 55
    assert st["ports"]["a"]["pacing"]["waits"] > 0


def test_coalescing_with_a_real_guest(bed):
    """Coalescing holds calls back and a Linux guest (NAPI + EVENT_IDX) keeps receiving at full speed.

    Whether it lowers the interrupt rate depends on the load: Linux already suppresses calls while NAPI
    polls (EVENT_IDX), so under TCG runs have shown both more and fewer frames per call; the figures are
    printed, the mechanism itself is checked in tests/test_vhea_control_adapter.py.
    """
    bed.ssh("iso-b", "pkill -x iperf3; iperf3 -s -D -p 5301; sleep 1", check=False)

    def frames_per_call() -> tuple[float, float]:
        before = rx_frames_calls(bed)
        mbps = iperf3_mbps(bed, 3)
        after = rx_frames_calls(bed)
        frames = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        calls = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        return frames / max(calls, 1), mbps

    off, mbps_off = frames_per_call()
    bed.vhea("coalesce", "set", "--port", "b", "--max-frames", "64", "--max-usecs", "1000")
    try:
        on, mbps_on = frames_per_call()
        saved = sum(q["saved"] for q in json.loads(bed.vhea("coalesce", "show", "--port", "b", "--json").stdout)
                    ["queues"][0::2])
    finally:
        bed.vhea("coalesce", "set", "--port", "b", "--max-frames", "0", "--max-usecs", "0")
    print(f"\ncoalescing on iso-b's rx queues: {off:.1f} frames per call off ({mbps_off:.0f} Mbit/s), "
          f"{on:.1f} with 64 frames / 1000 us ({mbps_on:.0f} Mbit/s), {saved} calls saved")
    assert saved > 0
    assert mbps_on > 0.5 * mbps_off

"""`testbed bench-vm`: command lines, iperf3/ping parsing, clean-up of the namespace, and one real run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from testbed import benchvm
from testbed.cli import main as run_testbed
from vhea.cli import main as vhea_main

IPERF3_CLIENT = {
    "start": {"connected": [{"socket": 5, "local_host": "10.10.0.1", "remote_host": "10.10.0.2",
                             "remote_port": 5201}], "test_start": {"protocol": "TCP", "duration": 3}},
    "intervals": [{"sum": {"bits_per_second": 4.1e8}}],
    "end": {
        "sum_sent": {"seconds": 3.0, "bytes": 160000000, "bits_per_second": 4.266e8, "retransmits": 7},
        "sum_received": {"seconds": 3.04, "bytes": 159000000, "bits_per_second": 4.184e8},
        "cpu_utilization_percent": {"host_total": 80.0},
    },
}
IPERF3_ERROR = {"start": {}, "intervals": [], "end": {},
                "error": "unable to connect to server: Connection refused"}
PING_IPUTILS = """PING 10.10.0.2 (10.10.0.2) 56(84) bytes of data.

--- 10.10.0.2 ping statistics ---
5 packets transmitted, 5 received, 0% packet loss, time 803ms
rtt min/avg/max/mdev = 0.912/1.457/2.210/0.402 ms
"""
PING_BUSYBOX = """--- 10.10.0.2 ping statistics ---
5 packets transmitted, 5 packets received, 0% packet loss
round-trip min/avg/max = 0.5/0.75/1.0 ms
"""


def guest(tmp_path: Path) -> benchvm.Guest:
    return benchvm.Guest("vhb-a", "52:54:00:ff:00:01", "52:54:00:10:00:01", "10.10.0.1/24", 40022,
                         tmp_path / "a.qcow2", tmp_path / "a.console")


def test_parse_iperf3_takes_the_receiver_rate_and_retransmits():
    assert benchvm.parse_iperf3(json.dumps(IPERF3_CLIENT)) == (4.184e8, 7)
    no_retr = json.loads(json.dumps(IPERF3_CLIENT))
    del no_retr["end"]["sum_sent"]["retransmits"]
    assert benchvm.parse_iperf3(json.dumps(no_retr)) == (4.184e8, None)


@pytest.mark.parametrize("text, message", [
    (json.dumps(IPERF3_ERROR), "Connection refused"),
    ("iperf3: error - unable to connect", "no JSON"),
    (json.dumps({"end": {}}), "sum_received"),
])
def test_parse_iperf3_errors_are_reported(text, message):
    with pytest.raises(benchvm.VmBenchError, match=message):
        benchvm.parse_iperf3(text)


def test_parse_ping_iputils_and_busybox():
    assert benchvm.parse_ping(PING_IPUTILS) == pytest.approx(1.457)
    assert benchvm.parse_ping(PING_BUSYBOX) == pytest.approx(0.75)
    assert benchvm.parse_ping("100% packet loss") is None


def test_ratios_are_to_tap_bridge():
    rows = [benchvm.VmRow("vhea (vhost-user)", 215.0), benchvm.VmRow("tap+bridge", 430.0)]
    benchvm.ratios(rows)
    assert [r.ratio for r in rows] == [0.5, 1.0]
    alone = [benchvm.VmRow("vhea (vhost-user)", 215.0)]
    benchvm.ratios(alone)
    assert alone[0].ratio is None


def test_qemu_command_for_a_vhea_guest(tmp_path):
    g = guest(tmp_path)
    nic = benchvm.vhost_user_nic("/tmp/vhbvmX/a.sock", g.data_mac)
    cmd = benchvm.qemu_cmd("/usr/bin/qemu-system-x86_64", "tcg", Path("/img/vmlinux"), Path("/img/initrd.img"),
                           "console=ttyS0 quiet", g, nic, "vhbench-42")
    s = " ".join(cmd)
    assert cmd[0] == "/usr/bin/qemu-system-x86_64"
    assert cmd[cmd.index("-name") + 1] == "vhbench-42-vhb-a"
    assert "-accel tcg,thread=multi -cpu max" in s
    assert "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem" in s
    assert "-chardev socket,id=c0,path=/tmp/vhbvmX/a.sock -netdev vhost-user,id=n0,chardev=c0" in s
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:10:00:01,romfile=" in s
    assert "user,id=m,hostfwd=tcp:127.0.0.1:40022-:22" in s
    assert "virtio-net-pci,netdev=m,mac=52:54:00:ff:00:01,romfile=" in s
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0 quiet"  # one argument, spaces and all
    assert f"file={g.overlay},if=virtio,format=qcow2" in s
    assert f"file:{g.console}" in s
    kvm = benchvm.qemu_cmd("q", "kvm", Path("k"), Path("i"), "c", g, nic, "t")
    assert "-accel kvm -cpu host" in " ".join(kvm) and "tcg,thread=multi" not in kvm


def test_tap_nic_and_netns_wrapping(tmp_path):
    off = " ".join(benchvm.tap_nic("tapA", "52:54:00:10:00:01", vhost=False))
    assert "tap,id=n0,ifname=tapA,script=no,downscript=no,vhost=off" in off
    assert "tx_queue_size" not in off  # QEMU refuses tx_queue_size > 256 on tap
    assert "vhost=on" in " ".join(benchvm.tap_nic("tapB", "52:54:00:10:00:02", vhost=True))
    assert benchvm.netns_exec("vhbench-1", ["qemu", "-x"]) == ["ip", "netns", "exec", "vhbench-1", "qemu", "-x"]
    assert benchvm.netns_exec(None, ["qemu"]) == ["qemu"]


def test_ssh_command_runs_inside_the_namespace_when_given_one():
    plain = benchvm.ssh_cmd(Path("/k/id_ed25519"), 40022, "iperf3 -s -D")
    assert plain[:5] == ["ssh", "-i", "/k/id_ed25519", "-p", "40022"]
    assert plain[-2:] == ["root@127.0.0.1", "iperf3 -s -D"] and "BatchMode=yes" in plain
    inside = benchvm.ssh_cmd(Path("/k/id_ed25519"), 40022, "true", netns="vhbench-7")
    assert inside[:4] == ["ip", "netns", "exec", "vhbench-7"] and inside[4:] == benchvm.ssh_cmd(
        Path("/k/id_ed25519"), 40022, "true")


def test_netns_setup_commands():
    cmds = benchvm.netns_setup_cmds("vhbench-9")
    assert cmds[0] == ["ip", "netns", "add", "vhbench-9"]
    assert all(c[:4] == ["ip", "netns", "exec", "vhbench-9"] for c in cmds[1:])
    joined = [" ".join(c[4:]) for c in cmds[1:]]
    assert "ip link set lo up" in joined  # QEMU's hostfwd binds 127.0.0.1 of the namespace
    assert "ip link add br0 type bridge" in joined
    for tap in ("tapA", "tapB"):
        assert f"ip link set {tap} master br0" in joined and f"ip link set {tap} up" in joined
        assert joined.index(f"ip tuntap add {tap} mode tap vnet_hdr") < joined.index(f"ip link set {tap} master br0")


def _netns_list() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@needs_root
def test_bridge_netns_is_removed_after_an_error():
    ns = f"vhbench-t{os.getpid()}"
    with pytest.raises(RuntimeError, match="boom"), benchvm.bridge_netns(ns):
        links = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "link"], capture_output=True, text=True,
                               check=True).stdout
        assert "tapA" in links and "tapB" in links and "br0" in links
        raise RuntimeError("boom")
    assert ns not in _netns_list()


@needs_root
def test_bridge_netns_is_removed_when_setup_fails_half_way(monkeypatch):
    ns = f"vhbench-u{os.getpid()}"
    good = benchvm.netns_setup_cmds(ns)
    monkeypatch.setattr(benchvm, "netns_setup_cmds", lambda n: [*good[:3], ["ip", "netns", "exec", n, "false"]])
    with pytest.raises(benchvm.VmBenchError), benchvm.bridge_netns(ns):
        pass
    assert ns not in _netns_list()


def test_guests_stop_kills_what_it_started(tmp_path):
    qemus = benchvm.Guests()
    p = qemus.start(["sleep", "60"], tmp_path / "log")
    qemus.stop()
    assert p.poll() is not None and qemus.procs == []


@needs_root
def test_run_cleans_up_vhea_and_netns_when_a_setup_fails(monkeypatch, tmp_path):
    """A failure in the second set-up: the namespace and vhea serve are gone, the logs are kept."""
    import testbed.accel
    import testbed.image.cache

    seen = {}

    def fake_measure(image, accel, workdir, tag, nics, duration, netns, ping, cpu_pid, say):
        if tag == "vhea":
            seen["vhea_pid"] = cpu_pid
            assert Path(f"/proc/{cpu_pid}").exists()
            return 3e8, 0, 1.0, 0.2
        seen["ns"] = netns
        assert netns in _netns_list()
        raise benchvm.VmBenchError("guest did not boot")

    monkeypatch.setattr(testbed.image.cache, "ensure_image", lambda **kw: SimpleNamespace(kernel=tmp_path / "vmlinux"))
    monkeypatch.setattr(testbed.accel, "choose_accel", lambda req, kernel, cache: ("tcg", "test"))
    monkeypatch.setattr(benchvm, "measure_pair", fake_measure)
    with pytest.raises(benchvm.VmBenchError, match="did not boot"):
        benchvm.run(duration=1)
    assert seen["ns"] not in _netns_list()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{seen['vhea_pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # terminated and reaped by vhea_server
    assert not Path(f"/proc/{seen['vhea_pid']}").exists()
    kept = list(Path(tempfile.gettempdir()).glob(f"vhbench-{os.getpid()}-*"))
    assert kept and all(not list(d.glob("*.qcow2")) for d in kept)  # logs kept, overlays removed
    for d in kept:
        shutil.rmtree(d)


def test_repeats_alternate_the_order_and_report_medians(monkeypatch, tmp_path):
    """--repeats 3: vhea, tap | tap, vhea | vhea, tap; each set-up's row is the median, every run kept."""
    import testbed.accel
    import testbed.image.cache

    order = []
    rates = {"vhea1": 100e6, "vhea2": 300e6, "vhea3": 200e6, "tap1": 400e6, "tap2": 600e6, "tap3": 500e6}

    def fake_measure(image, accel, workdir, tag, nics, duration, netns, ping, cpu_pid, say):
        order.append(tag)
        return rates[tag], 1, 2.0, (0.1 if tag.startswith("vhea") else None)

    monkeypatch.setattr(testbed.image.cache, "ensure_image", lambda **kw: SimpleNamespace(kernel=tmp_path / "vmlinux"))
    monkeypatch.setattr(testbed.accel, "choose_accel", lambda req, kernel, cache: ("tcg", "test"))
    monkeypatch.setattr(benchvm, "measure_pair", fake_measure)
    res = benchvm.run(duration=1, repeat=3)
    assert order == ["vhea1", "tap1", "tap2", "vhea2", "vhea3", "tap3"]
    rows = {r.setup: r for r in res.rows}
    assert rows["vhea (vhost-user)"].mbps == 200.0 and rows["vhea (vhost-user)"].runs == [100.0, 300.0, 200.0]
    assert rows["tap+bridge"].mbps == 500.0 and rows["tap+bridge"].ratio == 1.0
    assert rows["vhea (vhost-user)"].ratio == pytest.approx(0.4)
    assert rows["vhea (vhost-user)"].vhea_cpu == 0.1 and rows["tap+bridge"].vhea_cpu is None
    assert res.repeat == 3 and json.loads(benchvm.to_json(res))["rows"][0]["runs"] == [100.0, 300.0, 200.0]


def test_combine_takes_medians_of_even_counts():
    row = benchvm.combine("tap+bridge", [benchvm.VmRow("tap+bridge", 100.0, rtt_ms=1.0),
                                         benchvm.VmRow("tap+bridge", 300.0, rtt_ms=3.0)])
    assert (row.mbps, row.rtt_ms, row.runs) == (200.0, 2.0, [100.0, 300.0])


def test_cli_rejects_a_bad_repeat_with_vm(capsys):
    assert run_testbed(["bench-vm", "--repeats", "11", "--json"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_cli_rejects_a_bad_duration(capsys):
    assert run_testbed(["bench-vm", "--duration", "0", "--json"]) == 2
    assert "--duration" in capsys.readouterr().err


def test_vhea_bench_vm_says_where_it_moved(capsys):
    """`vhea bench --vm` (options and all) is one line pointing at `testbed bench-vm`, exit 2."""
    assert vhea_main(["bench", "--vm", "--duration", "3", "--accel", "tcg", "--json"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "testbed bench-vm" in err[0] and err[0].startswith("vhea: error: ")


# ---- the real thing ---------------------------------------------------------------------------------------------

def _processes_naming(marker: bytes) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.vm
@needs_root
def test_vm_bench_measures_both_setups_and_leaves_nothing_behind():
    p = subprocess.Popen([sys.executable, "-m", "testbed.cli", "bench-vm", "--duration", "3", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err[-3000:]
    res = json.loads(out)
    rows = {r["setup"]: r for r in res["rows"]}
    assert set(rows) == {"vhea (vhost-user)", "tap+bridge"}
    for r in rows.values():
        assert r["mbps"] > 0
    assert rows["tap+bridge"]["ratio"] == 1.0
    assert rows["vhea (vhost-user)"]["vhea_cpu"] > 0
    assert res["accel"] in ("kvm", "tcg") and isinstance(res["vhost_net"], bool)
    marker = f"vhbench-{p.pid}"
    assert marker not in _netns_list()
    assert _processes_naming(marker.encode()) == []
    print(f"\n{json.dumps(res, indent=1)}")


def test_cli_reports_an_interrupt_as_exit_130(monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchvm, "run", interrupted)
    assert run_testbed(["bench-vm", "--duration", "3"]) == 130
    assert "interrupted" in capsys.readouterr().err

"""The testbed's own logic: domain XML, topology file, libvirt connection errors, accel choice, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbed import accel, devicemodel, virt
from testbed.domain import GuestSpec, render_domain
from testbed.lifecycle.options import UpOptions, guest_names
from testbed.state import DeviceModelInfo, GuestInfo, Topology

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def spec(tmp_path: Path, **over) -> GuestSpec:
    base = dict(
        name="iso-a", accel="tcg", vcpus=2, memory_mib=1024, vcpu_pins=[0, 1],
        kernel=tmp_path / "vmlinux", initrd=tmp_path / "initrd.img", cmdline="console=ttyS0 quiet",
        disk=tmp_path / "disk.qcow2", data_mac="52:54:00:10:00:01", vhost_socket=tmp_path / "a.sock",
        queues=2, console_log=tmp_path / "console.log", ssh_port=22201, mgmt_mac="52:54:00:ff:00:01",
    )
    base.update(over)
    return GuestSpec(**base)


def test_domain_xml_has_what_vhost_user_needs(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path)))
    assert root.get("type") == "qemu"  # TCG
    assert root.find("memoryBacking/source").get("type") == "memfd"
    assert root.find("memoryBacking/access").get("mode") == "shared"
    nic = root.find("devices/interface[@type='vhostuser']")
    assert nic.find("source").get("path") == str(tmp_path / "a.sock")
    assert nic.find("source").get("mode") == "client"
    assert nic.find("driver").get("queues") == "2"
    assert nic.find("mac").get("address") == "52:54:00:10:00:01"
    pins = [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")]
    assert pins == [("0", "0"), ("1", "1")]
    assert root.find("seclabel").get("type") == "none"
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    assert "user,id=mgmt0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:22201-:22" in args
    assert root.find("cpu").get("mode") == "maximum"


def test_domain_xml_kvm_uses_host_cpu(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path, accel="kvm")))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"


def test_domain_xml_escapes_cmdline(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path, cmdline="a=<b>&c")))
    assert root.find("os/cmdline").text == "a=<b>&c"


@pytest.mark.parametrize("over, message", [
    (dict(accel="xen"), "accel must be kvm or tcg"),
    (dict(vcpus=2, vcpu_pins=[0]), "2 vCPUs but 1 pins"),
    (dict(queues=17), "queue pairs must be 1..16"),
    (dict(memory_mib=16), "out of range"),
    (dict(vhost_socket=Path("/" + "x" * 120)), "too long for AF_UNIX"),
])
def test_domain_spec_rejects_bad_values(tmp_path, over, message):
    with pytest.raises(ValueError, match=message):
        render_domain(spec(tmp_path, **over))


def topology(tmp_path: Path) -> Topology:
    return Topology(
        state_dir=str(tmp_path), uri="qemu:///embed?root=/x", accel="tcg", ssh_user="root", ssh_key="/k",
        image={"recipe_hash": "abc"}, device_model=DeviceModelInfo(str(tmp_path / "vhea"), 42, ["a", "b"], "/l"),
        guests=[GuestInfo("iso-a", "127.0.0.1", 2222, "10.10.0.1", "52:54:00:10:00:01", "a", 2, 1024,
                          "52:54:00:ff:00:01", "/c")],
    )


def test_topology_round_trip(tmp_path):
    path = tmp_path / "topology.json"
    topology(tmp_path).save(path)
    back = Topology.load(path)
    assert back == topology(tmp_path)
    assert back.guest("iso-a").ssh_port == 2222
    with pytest.raises(KeyError, match="no guest named 'iso-z'.*iso-a"):
        back.guest("iso-z")


def test_topology_rejects_other_versions_and_missing_file(tmp_path):
    path = tmp_path / "topology.json"
    with pytest.raises(FileNotFoundError, match="run `testbed up`"):
        Topology.load(path)
    raw = json.loads(json.dumps({"version": 99}))
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="topology version 99"):
        Topology.load(path)


def test_up_options_validation():
    with pytest.raises(ValueError, match="--guests must be 2..8"):
        UpOptions(state_dir=Path("/tmp"), guests=1).validate()
    with pytest.raises(ValueError, match="--queues must be 1..16"):
        UpOptions(state_dir=Path("/tmp"), queues=0).validate()
    assert guest_names(3) == [("iso-a", "a"), ("iso-b", "b"), ("iso-c", "c")]


def test_isolate_cpus_become_kernel_parameters_for_the_dedicated_vcpus():
    opts = UpOptions(state_dir=Path("/tmp"), vcpus=4, isolate_cpus="1,3")
    opts.validate()
    assert opts.guest_kernel_args() == ["isolcpus=1,3", "nohz_full=1,3", "rcu_nocbs=1,3", "irqaffinity=0,2"]
    assert UpOptions(state_dir=Path("/tmp"), vcpus=4, isolate_cpus="1-3").isolated() == [1, 2, 3]
    assert UpOptions(state_dir=Path("/tmp")).guest_kernel_args() == []
    # A testbed with other isolated CPUs is not reused.
    assert opts.fingerprint() != UpOptions(state_dir=Path("/tmp"), vcpus=4).fingerprint()


@pytest.mark.parametrize("cpus, message", [
    ("2", "vCPU 2 does not exist"),
    ("0", "vCPU 0 must stay"),
    ("0-1", "vCPU 0 must stay"),
    ("one", "not a CPU list"),
    ("1,", "not a CPU list"),
    ("1-0", "runs backwards"),
])
def test_isolate_cpus_rejects_bad_lists(cpus, message):
    with pytest.raises(ValueError, match=message):
        UpOptions(state_dir=Path("/tmp"), vcpus=2, isolate_cpus=cpus).validate()


def test_cli_up_with_bad_isolate_cpus_is_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "up", "--state-dir", str(tmp_path / "st"),
                          "--isolate-cpus", "5"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "vCPU 5 does not exist" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("uri, message", [
    ("qemu+unix:///system?socket=/nonexistent/libvirt.sock", "cannot open libvirt URI"),
    ("qemu:///embed", "needs \\?root=DIR"),
])
def test_unreachable_libvirt_uri_is_a_clear_error(uri, message):
    with pytest.raises(virt.VirtError, match=message):
        virt.connect(uri)


def test_embedded_driver_opens_without_a_daemon(tmp_path):
    root = tmp_path / "embed"
    conn = virt.connect(virt.embed_uri(root))
    try:
        assert conn.getType() == "QEMU"
        assert virt.find_domain(conn, "no-such-guest") is None
        assert "cgroup_controllers = [ ]" in (root / "etc" / "qemu.conf").read_text()
    finally:
        conn.close()


def test_accel_tcg_requested_needs_no_probe(tmp_path):
    assert accel.choose_accel("tcg", tmp_path / "vmlinux", tmp_path) == ("tcg", "TCG requested")
    with pytest.raises(ValueError, match="accel must be auto, kvm or tcg"):
        accel.choose_accel("hvf", tmp_path / "vmlinux", tmp_path)


def test_accel_uses_cached_probe_verdict(tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    key = accel.probe_key(kernel)
    (tmp_path / "kvm-probe.json").write_text(json.dumps({key: {"ok": False, "reason": "hangs"}}))
    assert accel.choose_accel("auto", kernel, tmp_path) == ("tcg", "hangs (cached probe)")
    with pytest.raises(RuntimeError, match="KVM requested but it does not work here: hangs"):
        accel.choose_accel("kvm", kernel, tmp_path)


def test_device_model_stop_never_signals_a_foreign_process():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        devicemodel.stop(other.pid, timeout_s=0.5)  # not a vhea: must be left alone
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_cli_status_without_testbed_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "status", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "no testbed is up" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


@pytest.mark.parametrize("line, message", [
    (b"not json", "not JSON"),
    (b"[1, 2]", 'string "cmd"'),
    (b'{"cmd": 3}', 'string "cmd"'),
    (b'{"cmd": "reboot"}', "unknown command 'reboot'"),
    (b'{"cmd": "status", "pad": "' + b"x" * 5000 + b'"}', "too long"),
])
def test_supervisor_rejects_bad_requests(line, message):
    from testbed.supervisor import parse_request

    with pytest.raises(ValueError, match=message):
        parse_request(line)


def test_supervisor_accepts_its_commands():
    from testbed.supervisor import parse_request

    assert parse_request(b'{"cmd": "status"}') == "status"
    assert parse_request(b'{"cmd": "down"}') == "down"


def test_supervisor_request_without_supervisor_is_a_clear_error(tmp_path):
    from testbed.supervisor import SupervisorError, request

    with pytest.raises(SupervisorError, match="no testbed supervisor is listening"):
        request(tmp_path, "status")


def test_cli_up_with_unreachable_uri_fails_before_building_anything(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "up", "--state-dir", str(tmp_path / "st"),
                          "--uri", "qemu+unix:///system?socket=/nonexistent/libvirt.sock"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "cannot open libvirt URI" in res.stdout and "/nonexistent/libvirt.sock" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "st" / "topology.json").exists()


def test_restart_device_model_replaces_the_process_and_records_it(tmp_path):
    """Without guests: the old vhea goes, a new one serves the same port sockets, topology.json points at it."""
    from rich.console import Console

    from testbed.lifecycle.restart import restart_device_model

    sock_dir, log = tmp_path / "vhea", tmp_path / "vhea.log"
    old = devicemodel.start(sock_dir, ["a", "b"], 2, log)
    new = 0
    try:
        topo = Topology(state_dir=str(tmp_path), uri="qemu:///embed?root=/x", accel="tcg", ssh_user="root",
                        ssh_key="/k", image={}, device_model=DeviceModelInfo(str(sock_dir), old, ["a", "b"], str(log)),
                        guests=[], options={"queues": 2})
        topo.save(tmp_path / "topology.json")
        new = restart_device_model(tmp_path, Console(file=open("/dev/null", "w")))
        assert new != old and not devicemodel.pid_alive(old)
        assert devicemodel.is_vhea(new)
        assert Topology.load(tmp_path / "topology.json").device_model.pid == new
        ports = devicemodel.stats(sock_dir)["ports"]
        assert sorted(ports) == ["a", "b"] and not any(p["connected"] for p in ports.values())
    finally:
        for pid in (old, new):
            if pid:
                devicemodel.stop(pid)


def test_cli_restart_device_model_without_testbed_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "restart-device-model", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "no testbed is up" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr

"""testbed.domain: the libvirt domain XML of a guest (vhost-user NIC, shared memory, pins, checks)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbed.domain import GuestSpec, render_domain

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
    assert "-icount" not in args  # off unless asked for


def test_domain_xml_with_icount_passes_it_to_qemu_and_pins_no_vcpus(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path, icount="shift=3,sleep=off")))
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    assert args[args.index("-icount") + 1] == "shift=3,sleep=off"
    # Single-threaded TCG has no thread per vCPU to pin: libvirt would refuse to start the domain.
    assert root.findall("cputune/vcpupin") == []


def test_domain_xml_forwards_the_control_port_on_each_bind(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path, control_port=40001, control_binds=("127.0.0.1", "10.254.0.9"))))
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    assert ("user,id=mgmt0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:22201-:22,hostfwd=tcp:127.0.0.1:40001-:5701,"
            "hostfwd=tcp:10.254.0.9:40001-:5701") in args


def test_the_forwarded_control_port_is_isoperfs_default():
    from isoperf.protocol import DEFAULT_PORT
    from testbed.domain import GUEST_CONTROL_PORT
    from testbed.harness.control_path import FORWARDED_PORT, GATEWAY
    from testbed.lifecycle.up import MGMT_GATEWAY

    assert GUEST_CONTROL_PORT == FORWARDED_PORT == DEFAULT_PORT
    assert GATEWAY == MGMT_GATEWAY


def test_domain_xml_kvm_uses_host_cpu(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path, accel="kvm")))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"


def test_domain_xml_escapes_cmdline(tmp_path):
    root = ET.fromstring(render_domain(spec(tmp_path, cmdline="a=<b>&c")))
    assert root.find("os/cmdline").text == "a=<b>&c"


@pytest.mark.parametrize("over, message", [
    (dict(accel="xen"), "accel must be kvm or tcg"),
    (dict(accel="kvm", icount="shift=3"), "-icount needs TCG"),
    (dict(vcpus=2, vcpu_pins=[0]), "2 vCPUs but 1 pins"),
    (dict(queues=17), "queue pairs must be 1..16"),
    (dict(memory_mib=16), "out of range"),
    (dict(vhost_socket=Path("/" + "x" * 120)), "too long for AF_UNIX"),
    (dict(control_port=5, control_binds=("127.0.0.1,hostfwd=tcp::1-:22",)), "is not an IPv4 address"),
    (dict(control_port=0, control_binds=("127.0.0.1",)), "control port 0 out of range"),
])
def test_domain_spec_rejects_bad_values(tmp_path, over, message):
    with pytest.raises(ValueError, match=message):
        render_domain(spec(tmp_path, **over))

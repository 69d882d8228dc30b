"""Build (or reuse) the guest image and boot one guest with plain QEMU under TCG.

Checks the whole contract others rely on: the kernel command line configures the management NIC by MAC,
the init prints ISOSTACK-READY on the serial console, and root can log in with the image's SSH key.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time

import paramiko
import pytest

from testbed.image.cache import ensure_image
from testbed.image.cmdline import kernel_cmdline
from testbed.image.overlay import create_overlay

pytestmark = pytest.mark.vm

MGMT_MAC = "52:54:00:ff:00:01"
DATA_MAC = "52:54:00:10:00:01"
READY_TIMEOUT = 120.0
SSH_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ssh_connect(port: int, key_path, deadline: float) -> paramiko.SSHClient:
    key = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1", port=port, username="root", pkey=key, timeout=5, banner_timeout=10,
                auth_timeout=10, allow_agent=False, look_for_keys=False,
            )  # fmt: skip
            return client
        except (OSError, paramiko.SSHException):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=30)
    out = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return out


def test_boot_guest_and_ssh(tmp_path, record_property):
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        pytest.skip("qemu-system-x86_64 not installed")

    started = time.monotonic()
    image = ensure_image()
    record_property("image_ready_seconds", round(time.monotonic() - started, 1))

    overlay = create_overlay(image, tmp_path / "guest.qcow2")
    console_log = tmp_path / "console.log"
    port = _free_port()
    cmdline = kernel_cmdline(image, "boot-test", [(MGMT_MAC, "10.0.2.15/24"), (DATA_MAC, "10.10.0.1/24")])
    cmd = [
        qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1", "-m", "512M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        # The data NIC comes first on the PCI bus (so it is eth0): the guest must pick NICs by MAC.
        "-netdev", "user,id=d,restrict=on",
        "-device", f"virtio-net-pci,netdev=d,mac={DATA_MAC},romfile=",
        "-netdev", f"user,id=m,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"virtio-net-pci,netdev=m,mac={MGMT_MAC},romfile=",
        "-serial", f"file:{console_log}",
    ]  # fmt: skip
    boot_start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = None
    try:
        deadline = boot_start + READY_TIMEOUT
        while "ISOSTACK-READY boot-test" not in (console_log.read_text() if console_log.exists() else ""):
            assert proc.poll() is None, f"QEMU exited early: {proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, f"no ISOSTACK-READY; console:\n{console_log.read_text()}"
            time.sleep(0.1)
        ready = time.monotonic() - boot_start

        client = _ssh_connect(port, image.ssh_key, time.monotonic() + SSH_TIMEOUT)
        ssh_ready = time.monotonic() - boot_start
        assert _run(client, "python3 -c 'print(6*7)'").strip() == "42"
        assert _run(client, "iperf3 --version").startswith("iperf 3.")
        assert _run(client, "hostname").strip() == "boot-test"
        addrs = {line.split()[1]: line.split()[3] for line in _run(client, "ip -o -4 addr show").splitlines()}
        macs = dict(
            line.split()
            for line in _run(
                client, "cd /sys/class/net && for d in eth*; do echo $d $(cat $d/address); done"
            ).splitlines()
        )
        assert macs["eth0"] == DATA_MAC and addrs["eth0"] == "10.10.0.1/24"
        assert macs["eth1"] == MGMT_MAC and addrs["eth1"] == "10.0.2.15/24"
        assert _run(client, "cat /proc/1/comm").strip() != "systemd"

        record_property("boot_to_ready_seconds", round(ready, 2))
        record_property("boot_to_ssh_seconds", round(ssh_ready, 2))
        print(f"\nboot to ISOSTACK-READY: {ready:.2f} s, boot to SSH command: {ssh_ready:.2f} s")
        # Nothing but the ready line should reach the console during a normal boot.
        assert console_log.read_text().strip() == "ISOSTACK-READY boot-test"

        # /usr/local/sbin/poweroff asks the init to power off: QEMU must exit by itself.
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            client.exec_command("poweroff", timeout=5)
        off_start = time.monotonic()
        assert proc.wait(timeout=30) == 0
        print(f"poweroff to QEMU exit: {time.monotonic() - off_start:.2f} s")
    finally:
        if client is not None:
            client.close()
        proc.kill()  # our own QEMU, by its Popen handle (PID)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        proc.stdout.close()

"""Domain XML for a testbed guest, rendered from a jinja2 template."""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"
GUEST_CONTROL_PORT = 5701  # isoperf's default control port (isoperf.protocol.DEFAULT_PORT; a test checks)


@dataclass
class GuestSpec:
    """Everything the domain template needs to know about one guest."""

    name: str
    accel: str  # "kvm" or "tcg"
    vcpus: int
    memory_mib: int
    vcpu_pins: list[int]
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path
    data_mac: str
    vhost_socket: Path
    queues: int
    console_log: Path
    ssh_port: int
    mgmt_mac: str
    emulator: str = "/usr/bin/qemu-system-x86_64"
    # isoperf's control port (guest 5701) forwarded from this host port on each of control_binds (host
    # addresses): the control connection's management path (0: none)
    control_port: int = 0
    control_binds: tuple[str, ...] = ()
    icount: str = ""  # the value of QEMU's -icount (testbed.icount.Icount.qemu_arg); "": off
    ssh_bind: str = "127.0.0.1"  # the host address SSH is forwarded from (another host's harness needs one)

    def validate(self) -> None:
        if self.accel not in ("kvm", "tcg"):
            raise ValueError(f"guest {self.name}: accel must be kvm or tcg, not {self.accel!r}")
        if self.icount and self.accel != "tcg":
            raise ValueError(f"guest {self.name}: -icount needs TCG, not {self.accel}")
        if not 1 <= self.vcpus <= 64:
            raise ValueError(f"guest {self.name}: vcpus must be 1..64, not {self.vcpus}")
        if len(self.vcpu_pins) != self.vcpus:
            raise ValueError(f"guest {self.name}: {self.vcpus} vCPUs but {len(self.vcpu_pins)} pins")
        if not 128 <= self.memory_mib <= 1 << 20:
            raise ValueError(f"guest {self.name}: memory {self.memory_mib} MiB out of range")
        if not 1 <= self.queues <= 16:
            raise ValueError(f"guest {self.name}: queue pairs must be 1..16, not {self.queues}")
        for addr in (self.ssh_bind, *self.control_binds):  # each goes into QEMU's -netdev option string
            try:
                ipaddress.IPv4Address(addr)
            except ValueError:
                raise ValueError(f"guest {self.name}: control forward bind {addr!r} is not an IPv4 address") from None
        if self.control_binds and not 1 <= self.control_port <= 65535:
            raise ValueError(f"guest {self.name}: control port {self.control_port} out of range")
        if len(str(self.vhost_socket)) > 107:
            raise ValueError(f"guest {self.name}: socket path too long for AF_UNIX: {self.vhost_socket}")


def render_domain(spec: GuestSpec) -> str:
    spec.validate()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["xml", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )
    return env.get_template("guest.xml.j2").render(
        domain_type="kvm" if spec.accel == "kvm" else "qemu",
        name=spec.name,
        memory_mib=spec.memory_mib,
        vcpus=spec.vcpus,
        # Single-threaded TCG (icount) has no thread per vCPU: libvirt refuses to start a domain that pins them
        # ("cpu affinity is not supported"), so the one TCG thread runs where the host schedules it.
        vcpu_pins=[] if spec.icount else spec.vcpu_pins,
        kernel=spec.kernel,
        initrd=spec.initrd,
        cmdline=spec.cmdline,
        emulator=shutil.which(spec.emulator) or spec.emulator,
        disk=spec.disk,
        data_mac=spec.data_mac,
        vhost_socket=spec.vhost_socket,
        queues=spec.queues,
        console_log=spec.console_log,
        ssh_port=spec.ssh_port,
        ssh_bind=spec.ssh_bind,
        mgmt_mac=spec.mgmt_mac,
        control_forwards="".join(f",hostfwd=tcp:{a}:{spec.control_port}-:{GUEST_CONTROL_PORT}"
                                 for a in spec.control_binds),
        icount=spec.icount,
    )

"""Bringing the testbed up and down: device model, guest disks, domains, readiness.

`up` is all-or-nothing: if any step fails, whatever it started is stopped again, so a
failed `testbed up` leaves nothing running.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from testbed import devicemodel, image, virt
from testbed.accel import choose_accel
from testbed.domain import GuestSpec, render_domain
from testbed.ssh import wait_for_ssh
from testbed.state import DeviceModelInfo, GuestInfo, Topology, cache_root, topology_path

READY_MARKER = "ISOSTACK-READY"
DATA_SUBNET = "10.10.0"


@dataclass
class UpOptions:
    state_dir: Path
    uri: str | None = None
    guests: int = 2
    vcpus: int = 2
    memory_mib: int = 1024
    queues: int = 1
    accel: str = "auto"
    boot_timeout_s: float = 180.0

    def validate(self) -> None:
        if not 2 <= self.guests <= 8:
            raise ValueError(f"--guests must be 2..8, not {self.guests}")
        if not 1 <= self.vcpus <= 64:
            raise ValueError(f"--vcpus must be 1..64, not {self.vcpus}")
        if not 256 <= self.memory_mib <= 65536:
            raise ValueError(f"--memory must be 256..65536 MiB, not {self.memory_mib}")
        if not 1 <= self.queues <= 16:
            raise ValueError(f"--queues must be 1..16, not {self.queues}")


def guest_names(n: int) -> list[tuple[str, str]]:
    """(guest name, device-model port name) pairs: iso-a on port a, iso-b on port b, ..."""
    letters = "abcdefgh"
    return [(f"iso-{letters[i]}", letters[i]) for i in range(n)]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_console(log: Path, marker: str, timeout_s: float, alive) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if log.exists() and marker in log.read_text(errors="replace"):
            return time.monotonic() - t0
        if not alive():
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
            raise RuntimeError(f"guest stopped while booting; console: {' | '.join(tail) or 'empty'}")
        time.sleep(0.25)
    raise TimeoutError(f"no {marker!r} on {log} within {timeout_s:.0f} s")


def up(opts: UpOptions, console: Console) -> Topology:
    opts.validate()
    sdir = opts.state_dir
    tpath = topology_path(sdir)
    if tpath.exists():
        console.print(f"[yellow]a testbed was up in {sdir}; taking it down first[/]")
        down(sdir, console, uri=opts.uri)
    sdir.mkdir(parents=True, exist_ok=True)
    uri = opts.uri or virt.embed_uri(sdir / "libvirt")
    conn = virt.connect(uri)

    img = image.ensure_image(cache_root(), console=console)
    accel, reason = choose_accel(opts.accel, img.kernel, cache_root())
    if accel == "tcg" and opts.accel == "auto":
        console.print(f"[yellow]warning: KVM unusable ({reason}); guests run under TCG (slow, software emulation)[/]")

    names = guest_names(opts.guests)
    sock_dir = sdir / "vhea"
    dm_log = sdir / "vhea.log"
    started: list[str] = []
    dm_pid = 0
    try:
        with console.status("starting the device model (vhea serve)"):
            dm_pid = devicemodel.start(sock_dir, [p for _, p in names], opts.queues, dm_log)
        ncpu = os.cpu_count() or 1
        guests: list[GuestInfo] = []
        for i, (name, port) in enumerate(names):
            gdir = sdir / "guests" / name
            gdir.mkdir(parents=True, exist_ok=True)
            disk = image.create_overlay(img, gdir / "disk.qcow2")
            console_log = gdir / "console.log"
            console_log.unlink(missing_ok=True)
            data_mac = f"52:54:00:10:00:{i + 1:02x}"
            mgmt_mac = f"52:54:00:ff:00:{i + 1:02x}"
            data_ip = f"{DATA_SUBNET}.{i + 1}"
            ssh_port = free_tcp_port()
            spec = GuestSpec(
                name=name, accel=accel, vcpus=opts.vcpus, memory_mib=opts.memory_mib,
                vcpu_pins=[v % ncpu for v in range(opts.vcpus)],
                kernel=img.kernel, initrd=img.initrd,
                cmdline=image.kernel_cmdline(img, name, [(mgmt_mac, "10.0.2.15/24"),
                                                         (data_mac, f"{data_ip}/24")]),
                disk=disk, data_mac=data_mac, vhost_socket=sock_dir / f"{port}.sock",
                queues=opts.queues, console_log=console_log, ssh_port=ssh_port, mgmt_mac=mgmt_mac,
            )
            (gdir / "domain.xml").write_text(xml := render_domain(spec))
            virt.destroy_and_undefine(conn, name)
            virt.start_domain(conn, xml)
            started.append(name)
            guests.append(GuestInfo(
                name=name, ssh_host="127.0.0.1", ssh_port=ssh_port, data_ip=data_ip, data_mac=data_mac,
                port=port, vcpus=opts.vcpus, memory_mib=opts.memory_mib, mgmt_mac=mgmt_mac,
                console_log=str(console_log)))

        def ready(g: GuestInfo) -> tuple[str, float, float]:
            dom = virt.find_domain(conn, g.name)
            t_boot = wait_for_console(Path(g.console_log), f"{READY_MARKER} {g.name}", opts.boot_timeout_s,
                                      alive=lambda: dom is not None and dom.isActive())
            t_ssh = wait_for_ssh(g.ssh_host, g.ssh_port, "root", img.ssh_key, timeout_s=60.0)
            return g.name, t_boot, t_ssh

        with console.status(f"booting {len(guests)} guests ({accel}) and waiting for SSH"):
            with ThreadPoolExecutor(len(guests)) as pool:
                for name, t_boot, t_ssh in pool.map(ready, guests):
                    console.print(f"  {name}: ready in {t_boot:.1f} s, SSH after {t_ssh:.1f} s more")

        topo = Topology(
            state_dir=str(sdir), uri=uri, accel=accel, ssh_user="root", ssh_key=str(img.ssh_key),
            image={"recipe_hash": img.recipe_hash, "kernel_version": img.kernel_version, "dir": str(img.dir)},
            device_model=DeviceModelInfo(socket_dir=str(sock_dir), pid=dm_pid, ports=[p for _, p in names],
                                         log=str(dm_log)),
            guests=guests,
        )
        topo.save(tpath)
        return topo
    except BaseException:
        for name in started:
            try:
                virt.destroy_and_undefine(conn, name)
            except virt.VirtError as e:
                console.print(f"[red]cleanup: {e}[/]")
        if dm_pid:
            devicemodel.stop(dm_pid)
        raise
    finally:
        conn.close()


def down(sdir: Path, console: Console, uri: str | None = None) -> bool:
    """Stop every guest and the device model of the testbed in `sdir`; True if anything ran."""
    tpath = topology_path(sdir)
    if not tpath.exists():
        return False
    topo = Topology.load(tpath)
    conn = virt.connect(uri or topo.uri)
    try:
        for g in topo.guests:
            if virt.destroy_and_undefine(conn, g.name):
                console.print(f"stopped {g.name}")
    finally:
        conn.close()
    devicemodel.stop(topo.device_model.pid)
    console.print("stopped the device model")
    tpath.unlink()
    return True


def status(sdir: Path) -> tuple[Topology, dict[str, str], dict | None]:
    """The topology, each guest's libvirt state, and the device model's counters (or None)."""
    topo = Topology.load(topology_path(sdir))
    conn = virt.connect(topo.uri)
    states = {}
    try:
        for g in topo.guests:
            dom = virt.find_domain(conn, g.name)
            states[g.name] = "running" if dom is not None and dom.isActive() else "stopped"
    finally:
        conn.close()
    try:
        counters = devicemodel.stats(Path(topo.device_model.socket_dir))
    except (devicemodel.DeviceModelError, OSError, ValueError):
        counters = None
    return topo, states, counters

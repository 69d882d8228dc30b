"""`testbed up`: device model, guest disks, domains, readiness.

`up` is all-or-nothing: if any step fails, whatever it started is stopped again, so a
failed `testbed up` leaves nothing running.
"""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from testbed import devicemodel, peer, supervisor, virt
from testbed.accel import choose_accel
from testbed.domain import GuestSpec, render_domain
from testbed.image import cache as image_cache
from testbed.image.cmdline import kernel_cmdline
from testbed.image.overlay import create_overlay
from testbed.lifecycle.classifier_settings import publish_classifier_settings
from testbed.lifecycle.down import VHEA_PID_FILE, down, find_leftovers, stop_leftovers, stop_supervisor
from testbed.lifecycle.options import UpOptions, guest_names
from testbed.lifecycle.status import healthy
from testbed.ssh import wait_for_ssh
from testbed.state import DeviceModelInfo, GuestInfo, PeerInfo, Topology, cache_root, topology_path

READY_MARKER = "ISOSTACK-READY"
DATA_SUBNET = "10.10.0"
MGMT_GATEWAY = "10.0.2.2"  # QEMU user networking's gateway: the host, as seen from a guest's management NIC


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


def add_peer(opts: UpOptions, sock_dir: Path, console: Console,
             provide_device: peer.DeviceProvider | None = None) -> PeerInfo | None:
    """The native peer as `opts.peer` asks: made (None when "off", or "auto" on a host that cannot; a warning
    says why). `provide_device`: the TAP port of the running vhea unless a test passes its own device."""
    if opts.peer == "off":
        return None
    why_not = peer.unavailable_reason()
    if why_not is None and provide_device is None and not devicemodel.tap_ports_supported():
        why_not = "this vhea has no TAP ports (`vhea port add --tap`)"
    if why_not is None:
        try:
            with console.status("making the native peer (network namespace on a vhea TAP port)"):
                info = peer.create(opts.state_dir, DATA_SUBNET, provide_device or (
                    lambda ifname: devicemodel.add_tap_port(sock_dir, peer.PORT, ifname)))
            console.print(f"  peer: {info.address}/{info.prefix_len} on {info.interface} in namespace "
                          f"{info.namespace}")
            return info
        except (peer.PeerError, devicemodel.DeviceModelError) as e:
            why_not = str(e)
    if opts.peer == "on":
        raise RuntimeError(f"no native peer: {why_not}")
    console.print(f"[yellow]warning: no native peer ({why_not}); `server: peer` tests cannot run[/]")
    return None


def up(opts: UpOptions, console: Console, recreate: bool = False) -> Topology:
    """Bring the testbed up; a healthy one started with the same options is reused unless `recreate`."""
    opts.validate()
    sdir = opts.state_dir
    tpath = topology_path(sdir)
    if tpath.exists():
        running = None if recreate else healthy(sdir)
        if running is not None and running.options == opts.fingerprint():
            console.print(f"testbed already up in {sdir} with these options (--recreate starts it afresh)")
            publish_classifier_settings(running, console)
            return running
        console.print(f"[yellow]taking down the testbed that was up in {sdir} first[/]")
        down(sdir, console)
    elif left := find_leftovers(sdir):
        console.print(f"[yellow]stopping what an interrupted `testbed up` left in {sdir} first: {left.describe()}[/]")
        down(sdir, console)
    sdir.mkdir(parents=True, exist_ok=True)
    uri = opts.uri or virt.embed_uri(sdir / "libvirt")
    if not uri.startswith("qemu:///embed"):
        # Fail before building anything when a daemon's URI is unreachable. (An embed root is opened
        # only by the supervisor: a second opener would disturb its guests.)
        virt.connect(uri).close()

    img = image_cache.ensure_image(cache_root(), console=console)
    icount = opts.icount_spec()
    accel, reason = choose_accel("tcg" if icount else opts.accel, img.kernel, cache_root())
    if accel == "tcg" and opts.accel == "auto" and not icount:
        console.print(f"[yellow]warning: KVM unusable, using TCG (software emulation): {reason}[/]")
    if icount:
        console.print(f"[yellow]warning: -icount {icount.qemu_arg()}: guest time counts instructions; TCG runs "
                      f"single-threaded, so all {opts.vcpus} vCPUs of a guest share one host thread[/]")

    names = guest_names(opts.guests, opts.first_guest)
    sock_dir = sdir / "vhea"
    dm_log = sdir / "vhea.log"
    dm_pid = sup_pid = 0
    try:
        with console.status("starting the device model (vhea serve)"):
            dm_pid = devicemodel.start(sock_dir, [p for _, p in names], opts.queues, dm_log,
                                       pid_file=sdir / VHEA_PID_FILE, flow_control=opts.flow_control,
                                       pause_max_us=opts.pause_max_us)
        peer_info = add_peer(opts, sock_dir, console)
        ncpu = os.cpu_count() or 1
        guests: list[GuestInfo] = []
        domains: list[dict] = []
        for i, (name, port) in enumerate(names, start=opts.first_guest - 1):
            gdir = sdir / "guests" / name
            gdir.mkdir(parents=True, exist_ok=True)
            disk = create_overlay(img, gdir / "disk.qcow2")
            console_log = gdir / "console.log"
            console_log.unlink(missing_ok=True)
            data_mac = f"52:54:00:10:00:{i + 1:02x}"
            mgmt_mac = f"52:54:00:ff:00:{i + 1:02x}"
            data_ip = f"{DATA_SUBNET}.{i + 1}"
            ssh_port = free_tcp_port()
            control_port = free_tcp_port()
            control_binds = ("127.0.0.1", *([peer_info.mgmt_host_address] if peer_info and peer_info.mgmt_host_address
                                            else []))
            routes = [(str(peer.MGMT_NET), MGMT_GATEWAY)] if peer_info and peer_info.mgmt_address else []
            spec = GuestSpec(
                name=name, accel=accel, vcpus=opts.vcpus, memory_mib=opts.memory_mib,
                vcpu_pins=[v % ncpu for v in range(opts.vcpus)],
                kernel=img.kernel, initrd=img.initrd,
                cmdline=kernel_cmdline(img, name, [(mgmt_mac, "10.0.2.15/24"), (data_mac, f"{data_ip}/24")],
                                       extra=opts.guest_kernel_args(), routes=routes),
                disk=disk, data_mac=data_mac, vhost_socket=sock_dir / f"{port}.sock",
                queues=opts.queues, console_log=console_log, ssh_port=ssh_port, mgmt_mac=mgmt_mac,
                control_port=control_port, control_binds=control_binds,
                icount=icount.qemu_arg() if icount else "", ssh_bind=opts.ssh_bind,
            )
            (gdir / "domain.xml").write_text(xml := render_domain(spec))
            domains.append({"name": name, "xml": xml})
            ssh_host = "127.0.0.1" if opts.ssh_bind == "0.0.0.0" else opts.ssh_bind  # where wait_for_ssh tries
            guests.append(GuestInfo(
                name=name, ssh_host=ssh_host, ssh_port=ssh_port, data_ip=data_ip, data_mac=data_mac,
                port=port, vcpus=opts.vcpus, memory_mib=opts.memory_mib, mgmt_mac=mgmt_mac,
                console_log=str(console_log), control_port=control_port))

        (sdir / supervisor.DOMAINS_FILE).write_text(json.dumps(domains))
        with console.status(f"starting {len(domains)} guests through libvirt ({uri})"):
            sup_pid = supervisor.spawn(sdir, uri)

        def running(name: str) -> bool:
            return supervisor.request(sdir, "status")["domains"].get(name) == "running"

        def ready(g: GuestInfo) -> tuple[str, float, float]:
            t_boot = wait_for_console(Path(g.console_log), f"{READY_MARKER} {g.name}", opts.boot_timeout_s,
                                      alive=lambda: running(g.name))
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
            supervisor_pid=sup_pid,
            options=opts.fingerprint(),
            peer=peer_info,
            icount=icount.record() if icount else None,
        )
        topo.save(tpath)
        publish_classifier_settings(topo, console)
        return topo
    except BaseException:
        if sup_pid:
            stop_supervisor(sdir, sup_pid, console)
        if dm_pid:
            devicemodel.stop(dm_pid)
        stop_leftovers(sdir, console, ask_supervisor=False)  # e.g. a supervisor that failed to start its guests
        raise

"""The libvirt connection: the embedded QEMU driver by default, any libvirt URI on request.

`qemu:///embed?root=DIR` runs libvirt's QEMU driver inside this process: no daemon, all state
under DIR. It needs libvirt's event loop running in a thread of the process, and (on machines
whose cgroup tree is not ours) a qemu.conf that keeps libvirt away from cgroups.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

# libvirt logs warnings and errors to stderr by default; errors reach us as exceptions,
# so send its log to a file unless the user chose otherwise (read when libvirt initialises).
_LOG = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "isostack-testbed" / "libvirt.log"
if "LIBVIRT_LOG_OUTPUTS" not in os.environ:
    _LOG.parent.mkdir(parents=True, exist_ok=True)
    os.environ["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{_LOG}"

import libvirt  # noqa: E402

# The embed root's etc/qemu.conf: run QEMU as root, no cgroups, QEMU's stdio to a file
# (no virtlogd daemon), and no ownership games on the image files (they are ours, we are
# root; remembering owners in xattrs only produced warnings).
EMBED_QEMU_CONF = """\
# Written by isostack-testbed for libvirt's embedded QEMU driver.
cgroup_controllers = [ ]
stdio_handler = "file"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
"""

_event_loop_started = False
_event_loop_lock = threading.Lock()


class VirtError(RuntimeError):
    """A libvirt failure, with a message a user can act on."""


def embed_uri(root: Path) -> str:
    return f"qemu:///embed?root={root}"


def prepare_embed_root(root: Path) -> None:
    conf = root / "etc" / "qemu.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != EMBED_QEMU_CONF:
        conf.write_text(EMBED_QEMU_CONF)


def _start_event_loop() -> None:
    """libvirt's default event loop, in a daemon thread (the embed driver needs it)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _quiet_errors(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them as exceptions instead."""


def connect(uri: str) -> libvirt.virConnect:
    """Open a libvirt connection; an unreachable URI becomes a VirtError with libvirt's reason."""
    _start_event_loop()
    libvirt.registerErrorHandler(_quiet_errors, None)
    if uri.startswith("qemu:///embed"):
        root = uri.split("root=", 1)[1].split("&", 1)[0] if "root=" in uri else ""
        if not root:
            raise VirtError(f"libvirt URI {uri!r}: the embedded driver needs ?root=DIR")
        prepare_embed_root(Path(root))
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise VirtError(f"cannot open libvirt URI {uri!r}: {e.get_error_message()}") from None


def find_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise VirtError(f"looking up domain {name!r}: {e.get_error_message()}") from None


def destroy_and_undefine(conn: libvirt.virConnect, name: str) -> bool:
    """Stop a domain (hard) and forget it; True if there was one."""
    dom = find_domain(conn, name)
    if dom is None:
        return False
    try:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    except libvirt.libvirtError as e:
        raise VirtError(f"removing domain {name!r}: {e.get_error_message()}") from None
    return True


def start_domain(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    try:
        dom = conn.defineXML(xml)
        dom.create()
        return dom
    except libvirt.libvirtError as e:
        raise VirtError(f"starting domain: {e.get_error_message()}") from None


def versions(conn: libvirt.virConnect) -> dict[str, str]:
    def dotted(v: int) -> str:
        return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"

    return {"libvirt": dotted(conn.getLibVersion()), "hypervisor": dotted(conn.getVersion())}

"""Choosing the accelerator: KVM where it really boots a guest, else TCG.

A CPU without a virtualization flag (vmx, svm) in /proc/cpuinfo cannot run KVM, and neither can a host
without an accessible /dev/kvm: both mean TCG at once, without the boot probe. Beyond that,
/dev/kvm existing proves little (nested KVM on these machines aborts QEMU or hangs the guest
at boot), so the probe boots the guest kernel under KVM with no root disk and waits for the
kernel to get as far as looking for its root filesystem. The verdict is cached per host
kernel, QEMU binary and guest kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PROBE_TIMEOUT_S = 25.0
CPUINFO = Path("/proc/cpuinfo")
DEV_KVM = Path("/dev/kvm")
VIRT_FLAGS = ("vmx", "svm")  # Intel VT-x, AMD-V
# Lines a kernel prints once it ran through its initcalls and looks for a root filesystem.
BOOTED_MARKERS = ("VFS: Cannot open root device", "Kernel panic", "Unable to mount root", "Run /init")


def _qemu_binary() -> str:
    return shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"


def probe_key(kernel: Path) -> str:
    qemu = Path(_qemu_binary())
    qemu_id = f"{qemu.stat().st_size}:{qemu.stat().st_mtime_ns}" if qemu.exists() else "missing"
    text = f"{platform.release()}|{qemu_id}|{kernel}:{kernel.stat().st_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def virtualization_flags(cpuinfo_text: str) -> set[str]:
    """The virtualization flags (vmx, svm) on the `flags` lines of /proc/cpuinfo text."""
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            found.update(f for f in value.split() if f in VIRT_FLAGS)
    return found


def kvm_possible(cpuinfo: Path = CPUINFO, dev_kvm: Path = DEV_KVM) -> tuple[bool, str]:
    """Cheap checks before any boot: the CPU's virtualization flag, then /dev/kvm; (False, why) if KVM cannot be."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as e:
        return False, f"cannot read {cpuinfo}: {e.strerror or e}"
    if not virtualization_flags(text):
        return False, f"the CPU has no virtualization flag ({'/'.join(VIRT_FLAGS)} in {cpuinfo})"
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return False, f"{dev_kvm} is missing or not accessible"
    return True, "the CPU has a virtualization flag and /dev/kvm is accessible"


def kvm_boots(kernel: Path, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot `kernel` under KVM; (True, reason) only if it reached the root-mount stage."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        log = Path(tmp) / "console.log"
        cmd = [
            _qemu_binary(), "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
            "-display", "none", "-monitor", "none", "-serial", f"file:{log}", "-no-reboot", "-nodefaults",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                if any(m in text for m in BOOTED_MARKERS):
                    return True, "guest kernel booted under KVM"
                if proc.poll() is not None:
                    err = (proc.stderr.read() or "").strip().splitlines()
                    return False, f"QEMU exited ({proc.returncode}): {err[-1] if err else 'no message'}"
                time.sleep(0.2)
            return False, f"guest kernel did not boot under KVM within {timeout_s:.0f} s"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def choose_accel(requested: str, kernel: Path, cache_dir: Path, cpuinfo: Path = CPUINFO,
                 dev_kvm: Path = DEV_KVM) -> tuple[str, str]:
    """Return (accel, reason). `requested` is auto, kvm or tcg; auto probes (cached), unless the CPU flags or
    /dev/kvm already rule KVM out."""
    if requested == "tcg":
        return "tcg", "TCG requested"
    if requested not in ("auto", "kvm"):
        raise ValueError(f"accel must be auto, kvm or tcg, not {requested!r}")
    cache = cache_dir / "kvm-probe.json"
    key = probe_key(kernel)
    verdicts = {}
    if cache.exists():
        try:
            verdicts = json.loads(cache.read_text())
        except (OSError, ValueError):
            verdicts = {}
    if key in verdicts:
        ok, reason = verdicts[key]["ok"], verdicts[key]["reason"] + " (cached probe)"
    elif not (possible := kvm_possible(cpuinfo, dev_kvm))[0]:
        ok, reason = possible  # not cached: it costs nothing to check again, and a new CPU may have the flag
    else:
        ok, reason = kvm_boots(kernel)
        verdicts[key] = {"ok": ok, "reason": reason, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(verdicts, indent=2))
    if ok:
        return "kvm", reason
    if requested == "kvm":
        raise RuntimeError(f"KVM requested but it does not work here: {reason}")
    return "tcg", reason

"""Putting the guest code on the guests: isoperf's C send loop built on the host, each guest package synced.

The packages are folders (guestcmd.package_dirs), read from disk, never imported: the host process must not
run the runtime's module code to find them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testbed.harness import guestcmd, remote
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.remote import Shell


class BuildError(RuntimeError):
    """A host-side build of a guest package's C part failed; the message quotes its last lines."""


def build_sendloop(guest_root: Path) -> list[str]:
    """Build isoperf's C send loop (.so) into the folder that is uploaded (the guests have no gcc):
    `python -m isoperf.sendloop` with the guest code first on the path; returns the built file names."""
    env = dict(os.environ, PYTHONPATH=str(guest_root))
    r = subprocess.run([sys.executable, "-m", "isoperf.sendloop"], env=env, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise BuildError(f"building isoperf's C send loop failed: {tail}")
    return [Path(p).name for p in r.stdout.split()]


def sync_guest(shell: Shell, packages: list[remote.PackageSnapshot], layout: GuestLayout, log) -> dict:
    """Make the guest's packages equal to the snapshots (each skipped when unchanged, `log` says which); returns
    the guest's metadata: kernel, python and the packages' combined hash (remote.snapshots_hash)."""
    for package in packages:
        uploaded = remote.sync_package(shell, package, layout.remote_root, layout.python)
        log(f"{shell.name}: {package.name} package {'uploaded' if uploaded else 'unchanged, not uploaded'}")
    out = remote.check(shell, f"uname -r; {layout.python} --version 2>&1")
    lines = out.strip().splitlines() + ["", ""]
    return {"kernel": lines[0] or None, "python": lines[1] or None, "package_sha256": remote.snapshots_hash(packages)}


def snapshots(guest_root: Path) -> list[remote.PackageSnapshot]:
    """The guest packages read once, so every guest gets the same bytes even while someone edits the tree."""
    return [remote.PackageSnapshot.read(d) for d in guestcmd.package_dirs(guest_root)]

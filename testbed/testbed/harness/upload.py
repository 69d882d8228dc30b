"""Putting the guest code on the guests: their C parts checked (built at install time), each package synced.

The packages are folders (guestcmd.package_dirs), read from disk, never imported: the host process must not
run the runtime's module code to find them.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from testbed.harness import guestcmd, remote
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.remote import Shell


class NativePartsMissing(RuntimeError):
    """A guest package's C part is not built (or older than its source) in the folder that is uploaded."""


def check_native_parts(guest_root: Path) -> list[str]:
    """Every <name>.c of the guest packages needs its <name><EXT_SUFFIX> (or <name>.so, loaded by ctypes) beside
    it, not older than the source: the guests have no compiler, so installing the project builds them on the
    host (setup.py) and they travel with the upload. Returns the built files' names; nothing is compiled here."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    problems, built_names = [], []
    for package in guestcmd.package_dirs(guest_root):
        for source in sorted(package.glob("*.c")):
            built = next((p for p in (source.with_name(source.stem + suffix), source.with_suffix(".so"))
                          if p.exists()), None)
            if built is None:
                problems.append(f"{package.name}: {source.stem} is not built")
            elif int(built.stat().st_mtime) < int(source.stat().st_mtime):  # setuptools' copy keeps whole seconds
                problems.append(f"{package.name}: {built.name} is older than {source.name}")
            else:
                built_names.append(f"{package.name}/{built.name}")
    if problems:
        raise NativePartsMissing(f"the guest packages' native parts in {guest_root}: {'; '.join(problems)}; build "
                                 "them with `make native` (or `pip install -e .`) before the run")
    return built_names


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

"""Putting the guest code on the guests: their C parts checked (built at install time), each package synced.

The packages are folders (guestcmd.package_dirs), read from disk, never imported: the host process must not
run the runtime's module code to find them. Each is read once into a PackageSnapshot whose hash says whether
a guest already has it, and whose tarball is what travels (remote.Shell.put) when it does not.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.harness import guestcmd
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.remote import Shell, check

HASH_FILE = ".upload-sha256"


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


def sync_guest(shell: Shell, packages: list[PackageSnapshot], layout: GuestLayout, log) -> dict:
    """Make the guest's packages equal to the snapshots (each skipped when unchanged, `log` says which); returns
    the guest's metadata: kernel, python and the packages' combined hash (snapshots_hash)."""
    for package in packages:
        uploaded = sync_package(shell, package, layout.remote_root, layout.python)
        log(f"{shell.name}: {package.name} package {'uploaded' if uploaded else 'unchanged, not uploaded'}")
    out = check(shell, f"uname -r; {layout.python} --version 2>&1")
    lines = out.strip().splitlines() + ["", ""]
    return {"kernel": lines[0] or None, "python": lines[1] or None, "package_sha256": snapshots_hash(packages)}


def snapshots(guest_root: Path) -> list[PackageSnapshot]:
    """The guest packages read once, so every guest gets the same bytes even while someone edits the tree."""
    return [PackageSnapshot.read(d) for d in guestcmd.package_dirs(guest_root)]


def package_files(package_dir: Path) -> list[Path]:
    """The files to ship: Python sources and data, no caches."""
    return sorted(
        p
        for p in package_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


@dataclass(frozen=True)
class PackageSnapshot:
    """The package's files read once, so the hash and the uploaded tarball describe the same bytes even
    while someone edits the tree."""

    name: str
    files: tuple[tuple[str, bytes, int], ...]  # (relative path, content, mode)

    @classmethod
    def read(cls, package_dir: Path) -> PackageSnapshot:
        files = tuple(
            (p.relative_to(package_dir).as_posix(), p.read_bytes(), p.stat().st_mode & 0o777)
            for p in package_files(package_dir)
        )
        return cls(package_dir.name, files)

    @property
    def sha256(self) -> str:
        """Content hash over relative paths and bytes, so an unchanged tree is not uploaded again."""
        h = hashlib.sha256()
        for rel, data, _mode in self.files:
            h.update(rel.encode() + b"\0")
            h.update(hashlib.sha256(data).digest())
        return h.hexdigest()

    def tarball(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for rel, data, mode in self.files:
                info = tarfile.TarInfo(f"{self.name}/{rel}")
                info.size, info.mode = len(data), mode
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def package_hash(package_dir: Path) -> str:
    return PackageSnapshot.read(package_dir).sha256


def snapshots_hash(packages: list[PackageSnapshot]) -> str:
    """One hash for several packages uploaded together (names and their content hashes, in order): what a
    run's metadata records as the guest code it ran."""
    h = hashlib.sha256()
    for package in packages:
        h.update(package.name.encode() + b"\0" + package.sha256.encode() + b"\n")
    return h.hexdigest()


def sync_package(shell: Shell, package: PackageSnapshot, remote_root: str, python: str = "python3") -> bool:
    """Make <remote_root>/<package name> equal to the snapshot; returns False when it already was.

    One SFTP upload of a tarball (fewer round trips than a file each, which matters under TCG), unpacked
    with the guest's python3 (always there), then swapped in so a half upload is never used.
    """
    digest = package.sha256
    target = f"{remote_root.rstrip('/')}/{package.name}"
    remote = shell.run(f"cat {shlex.quote(target + '/' + HASH_FILE)} 2>/dev/null")
    if remote.exit_code == 0 and remote.stdout.strip() == digest:
        return False
    staging = f"{target}.upload"
    tar_remote = f"{staging}.tar.gz"
    check(shell, f"rm -rf {shlex.quote(staging)} && mkdir -p {shlex.quote(staging)}")
    with tempfile.TemporaryDirectory() as tmp:
        local_tar = Path(tmp) / "package.tar.gz"
        local_tar.write_bytes(package.tarball())
        shell.put(local_tar, tar_remote)
    q = shlex.quote
    check(
        shell,
        f"{python} -m tarfile -e {q(tar_remote)} {q(staging)} && rm -f {q(tar_remote)}"
        f" && printf '%s\\n' {digest} > {q(staging + '/' + package.name + '/' + HASH_FILE)}"
        f" && rm -rf {q(target)} && mv {q(staging + '/' + package.name)} {q(target)}"
        f" && rm -rf {q(staging)}",
    )
    return True

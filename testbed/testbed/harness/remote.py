"""Running commands on the guests and putting the guest packages there.

`Shell` is the small interface the runner needs; `FabricShell` is SSH to a guest, `LocalShell` runs on this
host (loopback tests, no VMs). Keeping the runner on this interface is what makes it testable.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

HASH_FILE = ".upload-sha256"


class RemoteError(RuntimeError):
    """A guest command or transfer that failed; the message names the guest."""


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class Shell(Protocol):
    name: str

    def run(self, command: str, timeout_s: float = 60.0) -> CommandResult: ...

    def put(self, local: Path, remote: str) -> None: ...

    def close(self) -> None: ...


class FabricShell:
    """A guest over SSH with fabric; host keys are not checked (the guests are ours, keys change per image)."""

    def __init__(self, name: str, host: str, port: int, user: str, key: str, connect_timeout_s: int = 15):
        import paramiko
        from fabric import Config, Connection

        self.name = name
        # An explicit empty SSH config: a user's ~/.ssh/config must not redirect our guests.
        config = Config(ssh_config=paramiko.SSHConfig())
        self.conn = Connection(
            host,
            port=port,
            user=user,
            config=config,
            connect_timeout=connect_timeout_s,
            connect_kwargs={"key_filename": key, "look_for_keys": False, "allow_agent": False},
        )

    def run(self, command: str, timeout_s: float = 60.0) -> CommandResult:
        try:
            r = self.conn.run(command, hide=True, warn=True, timeout=timeout_s, in_stream=False)
        except Exception as e:  # invoke/paramiko raise many kinds; the caller needs one
            raise RemoteError(f"{self.name}: {command!r} failed: {type(e).__name__}: {e}") from None
        return CommandResult(r.exited, r.stdout, r.stderr)

    def put(self, local: Path, remote: str) -> None:
        try:
            self.conn.put(str(local), remote=remote)
        except Exception as e:
            raise RemoteError(f"{self.name}: upload of {local} to {remote} failed: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        self.conn.close()


class LocalShell:
    """This host standing in for a guest (tests; `sh -c` like sshd runs commands)."""

    def __init__(self, name: str = "local"):
        self.name = name

    def run(self, command: str, timeout_s: float = 60.0) -> CommandResult:
        try:
            p = subprocess.run(
                ["sh", "-c", command], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.name}: {command!r} timed out after {timeout_s:.0f} s") from None
        return CommandResult(p.returncode, p.stdout, p.stderr)

    def put(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def close(self) -> None:
        pass


def check(shell: Shell, command: str, timeout_s: float = 60.0) -> str:
    """Run and require exit 0; returns stdout."""
    r = shell.run(command, timeout_s)
    if r.exit_code != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise RemoteError(f"{shell.name}: {command!r} exited {r.exit_code}: {tail}")
    return r.stdout


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

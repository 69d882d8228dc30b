"""Running commands on the guests: the Shell interface and its SSH and local implementations.

`Shell` is the small interface the runner needs; `FabricShell` is SSH to a guest, `LocalShell` runs on this
host (loopback tests, no VMs), `PeerShell` on this host in the native peer's network namespace. Keeping the
runner on this interface is what makes it testable.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


class PeerShell(LocalShell):
    """The testbed's native peer: commands run on this host inside its network namespace (`ip netns exec`), so
    they see the peer's address, routes and TCP counters, not the host's."""

    def __init__(self, name: str, namespace: str):
        super().__init__(name)
        self.namespace = namespace

    def run(self, command: str, timeout_s: float = 60.0) -> CommandResult:
        return super().run(f"exec ip netns exec {shlex.quote(self.namespace)} sh -c {shlex.quote(command)}",
                           timeout_s)


def check(shell: Shell, command: str, timeout_s: float = 60.0) -> str:
    """Run and require exit 0; returns stdout."""
    r = shell.run(command, timeout_s)
    if r.exit_code != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise RemoteError(f"{shell.name}: {command!r} exited {r.exit_code}: {tail}")
    return r.stdout

"""The host commands an image build runs, and how a failing one is reported.

A build takes minutes: the tools are checked up front, and a failure names the step and shows the tail of
the command's output, so the user knows what to install or fix.
"""

from __future__ import annotations

import subprocess

from testbed.image.artifacts import ImageBuildError

# Host commands a build runs (checked up front so a missing one fails before the slow steps).
BUILD_TOOLS = ("apt-cache", "apt-get", "dpkg-deb", "debootstrap", "chroot", "ssh-keygen", "busybox", "cpio", "mke2fs")


def run_tool(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a build command; on failure raise ImageBuildError with the tail of its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: {cmd[0]} is not installed (see testbed/install-deps.sh)") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc

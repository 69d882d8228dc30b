"""A guest's disk: a qcow2 overlay on the cached image's rootfs, so guests never write to the cache."""

from __future__ import annotations

from pathlib import Path

from testbed.image.artifacts import GuestImage
from testbed.image.tools import run_tool


def create_overlay(image: GuestImage, path: Path) -> Path:
    """Create a qcow2 overlay backed by the image's read-only rootfs, so guests never touch the cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_tool(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.rootfs), str(path)],
        what="qemu-img create (overlay)",
    )
    return path

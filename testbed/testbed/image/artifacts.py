"""What a built guest image is (its files and manifest) and the error every build step raises.

The bottom of testbed.image: every other module of the package uses these, and they use nothing of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The files of a complete image, besides manifest.json.
ARTIFACTS = ("vmlinux", "vmlinuz", "initrd.img", "rootfs.ext4", "id_ed25519", "id_ed25519.pub")


class ImageBuildError(RuntimeError):
    """Building or validating a guest image failed; the message says why and what to do."""


@dataclass(frozen=True)
class GuestImage:
    """A built image in the cache; all paths are inside ``dir``."""

    dir: Path
    kernel: Path  # uncompressed vmlinux: boots via PVH, much faster under TCG than the bzImage
    kernel_compressed: Path  # Debian's vmlinuz (bzImage), for loaders that need it
    initrd: Path
    rootfs: Path  # raw ext4, the backing file of the guests' qcow2 overlays
    ssh_key: Path  # private key authorised for root in the guest
    ssh_pubkey: Path
    kernel_version: str
    recipe_hash: str

    @classmethod
    def from_dir(cls, path: Path) -> GuestImage:
        """Load a cached image from its manifest."""
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(
            dir=path,
            kernel=path / "vmlinux",
            kernel_compressed=path / "vmlinuz",
            initrd=path / "initrd.img",
            rootfs=path / "rootfs.ext4",
            ssh_key=path / "id_ed25519",
            ssh_pubkey=path / "id_ed25519.pub",
            kernel_version=manifest["kernel_version"],
            recipe_hash=manifest["recipe_hash"],
        )

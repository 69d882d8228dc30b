"""Shared by the testbed.image tests: a GuestImage whose files need not exist."""

from __future__ import annotations

from testbed.image.artifacts import GuestImage


def fake_guest_image(tmp_path) -> GuestImage:
    d = tmp_path / "img"
    d.mkdir()
    return GuestImage(
        dir=d, kernel=d / "vmlinux", kernel_compressed=d / "vmlinuz", initrd=d / "initrd.img",
        rootfs=d / "rootfs.ext4", ssh_key=d / "id_ed25519", ssh_pubkey=d / "id_ed25519.pub",
        kernel_version="6.1.0-56-amd64", recipe_hash="0123456789abcdef",
    )  # fmt: skip

"""The guest's root file system: debootstrap, the kernel's modules, the recipe's overlay files, rootfs.ext4.

The rootfs is assembled as a plain directory and packed with ``mke2fs -d``, so a build needs no loop mounts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from testbed.image.artifacts import ImageBuildError
from testbed.image.recipe import RECIPE_DIR
from testbed.image.tools import run_tool


def debootstrap(recipe: dict, deb_cache: Path, rootfs: Path, mirror: str) -> None:
    """A minimal Debian of the recipe's suite with its packages in ``rootfs``, .debs kept in ``deb_cache``."""
    r = recipe
    run_tool(
        [
            "debootstrap", f"--variant={r['variant']}", f"--cache-dir={deb_cache}",
            "--include=" + ",".join(r["packages"]), r["suite"], str(rootfs), mirror,
        ],
        what="debootstrap",
    )  # fmt: skip


def install_modules(recipe: dict, rootfs: Path, kernel_tree: Path, kernel_version: str) -> None:
    """Copy the kernel's modules into the rootfs, drop the recipe's ``modules_prune`` dirs, run depmod."""
    ver = kernel_version
    modules = rootfs / "usr" / "lib" / "modules" / ver
    shutil.copytree(kernel_tree / "lib" / "modules" / ver, modules, symlinks=True)
    for rel in recipe.get("modules_prune", []):
        target = modules / "kernel" / rel
        if ".." in Path(rel).parts or not target.is_dir():
            raise ImageBuildError(f"modules_prune entry {rel!r} is not a directory of the modules tree")
        shutil.rmtree(target)
    # Debian's package has no modules.dep: the postinst would make it. Use the guest's own depmod.
    run_tool(["chroot", str(rootfs), "depmod", "-a", ver], what="depmod in the rootfs")


def install_overlay(recipe: dict, rootfs: Path) -> None:
    """Copy vm-images/rootfs/ over the rootfs (modes from the recipe), empty the ``prune`` dirs, write fstab."""
    overlay = RECIPE_DIR / "rootfs"
    for src in sorted(p for p in overlay.rglob("*") if p.is_file()):
        dst = rootfs / src.relative_to(overlay)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink():
            dst.unlink()
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)

    for rel in recipe.get("prune", []):
        _empty_dir(rootfs / rel)
    (rootfs / "etc" / "fstab").write_text("# root is mounted by the initramfs\n")


def make_ext4(recipe: dict, rootfs: Path, ext4: Path) -> int:
    """Pack ``rootfs`` into the ext4 image ``ext4`` with the recipe's free space; the bytes the tree uses."""
    used = _dir_size(rootfs)
    size_mib = used // 2**20 * 11 // 10 + int(recipe.get("rootfs_free_mib", 512))
    run_tool(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "isostack-root", "-E", "lazy_itable_init=0",
         "-d", str(rootfs), str(ext4), f"{size_mib}M"],
        what="mke2fs -d",
    )  # fmt: skip
    return used


def _empty_dir(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total

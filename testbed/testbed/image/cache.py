"""The image cache: ``<cache>/images/<recipe-hash>/``, built on first use, one build at a time.

A build runs in a temporary ``.build-*`` directory that is renamed into place only when complete, so an
interrupted build never leaves a half-built image behind, and the next build clears what it left.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console

from testbed.image import build
from testbed.image.artifacts import ARTIFACTS, GuestImage, ImageBuildError
from testbed.image.recipe import load_recipe, recipe_hash
from testbed.image.tools import BUILD_TOOLS


def _is_complete(path: Path) -> bool:
    return (path / "manifest.json").is_file() and all((path / name).is_file() for name in ARTIFACTS)


def _mounts_under(path: Path, mountinfo: str) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo text), deepest first."""
    root = os.path.realpath(path)
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...)
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a build directory, first detaching anything a killed debootstrap left mounted in it.

    Without this, rmtree could descend into a bind-mounted host /dev or /proc inside the chroot.
    """
    if not path.exists():
        return
    for point in _mounts_under(path, Path("/proc/self/mountinfo").read_text()):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounts_under(path, Path("/proc/self/mountinfo").read_text()):
        raise ImageBuildError(f"cannot remove {path}: file systems are still mounted in it")
    shutil.rmtree(path, ignore_errors=True)


def ensure_image(cache_root: Path | None = None, force: bool = False, console: Console | None = None) -> GuestImage:
    """Return the cached image for the current recipe, building it first if it is missing (or ``force``)."""
    console = console or Console(stderr=True)
    if cache_root is None:
        from testbed.state import cache_root as default_cache_root  # honours ISOSTACK_CACHE_DIR

        cache_root = default_cache_root()
    cache_root = Path(cache_root)
    digest = recipe_hash()
    images = cache_root / "images"
    final = images / digest
    if not force and _is_complete(final):
        console.print(f"image {digest}: cached in {final}", soft_wrap=True)
        return GuestImage.from_dir(final)

    if os.geteuid() != 0:
        raise ImageBuildError("building a guest image needs root (debootstrap and chroot); run it as root")
    missing = [tool for tool in BUILD_TOOLS if not shutil.which(tool)]
    if missing:
        raise ImageBuildError(
            f"building a guest image needs {', '.join(missing)} on the host; "
            "install them with testbed/install-deps.sh (packages debootstrap, busybox-static, cpio, e2fsprogs, "
            "qemu-utils, openssh-client)"
        )
    recipe = load_recipe()
    images.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: a second caller waits and then finds the finished image.
    with open(images / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _is_complete(final):
            console.print(f"image {digest}: cached in {final}", soft_wrap=True)
            return GuestImage.from_dir(final)
        for stale in [*images.glob(".build-*"), *images.glob(".old-*")]:  # left by a killed build
            _remove_tree(stale)
        started = time.monotonic()
        console.print(f"[bold]Building guest image {digest}[/] into {final}", soft_wrap=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=images))
        try:
            builder = build.ImageBuilder(recipe, cache_root, work, console)
            builder.build()
            builder.write_manifest(digest, started)
            if final.exists():  # force: move the old one aside, then swap in the new one
                old = images / f".old-{digest}-{os.getpid()}"
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            builder.out.rename(final)
        finally:
            _remove_tree(work)
    image = GuestImage.from_dir(final)
    sizes = json.loads((final / "manifest.json").read_text())["sizes"]
    console.print(
        f"[green]image {digest} built[/] in {time.monotonic() - started:.0f} s: kernel {image.kernel_version}, "
        f"rootfs.ext4 {sizes['rootfs.ext4'] / 2**20:.0f} MiB, initrd {sizes['initrd.img'] / 2**10:.0f} KiB",
        soft_wrap=True,
    )
    return image

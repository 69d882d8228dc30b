"""One image build: the steps in order, each timed and named on the console, and the manifest at the end.

Each step is a method, so a failure names the step; the work itself lives in the modules below
(kernel, rootfs, keys, initramfs). The build writes only inside its work directory: the cache swaps it in.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from testbed.image import initramfs, kernel, keys, mirror, rootfs
from testbed.image.artifacts import ARTIFACTS
from testbed.image.recipe import BUILDER_VERSION


class ImageBuilder:
    """One image build into ``work``; each step is a method so failures name the step."""

    def __init__(self, recipe: dict, cache_root: Path, work: Path, console: Console) -> None:
        self.recipe = recipe
        self.cache_root = cache_root
        self.work = work
        self.out = work / "image"
        self.rootfs = work / "rootfs"
        self.console = console
        self.deb_cache = cache_root / "debs"
        self.kernel_version = ""
        self.timings: dict[str, float] = {}

    def step(self, title: str, func) -> None:
        start = time.monotonic()
        with self.console.status(f"[bold]image:[/] {title}…"):
            func()
        elapsed = time.monotonic() - start
        self.timings[title] = round(elapsed, 1)
        self.console.print(f"  [green]✓[/] {title} [dim]({elapsed:.1f} s)[/]")

    def build(self) -> None:
        self.out.mkdir(parents=True)
        self.deb_cache.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror.find_debian_mirror(self.recipe["suite"], mirror.system_apt_sources())
        self.console.print(f"  Debian mirror from apt config: {self.mirror}")
        self.step("download and unpack the kernel", self.fetch_kernel)
        self.step(f"debootstrap {self.recipe['suite']} ({len(self.recipe['packages'])} packages)", self.debootstrap)
        self.step("install modules, overlay files and SSH keys", self.configure_rootfs)
        self.step("extract vmlinux", self.extract_kernel)
        self.step("build the initramfs", self.build_initramfs)
        self.step("make rootfs.ext4", self.make_ext4)

    def fetch_kernel(self) -> None:
        package = kernel.fetch_kernel_package(self.recipe["kernel_metapackage"], self.deb_cache, self.work / "kernel")
        self.kernel_version = package.version
        self.kernel_deb = package.deb
        self.kernel_tree = package.tree
        shutil.copyfile(self.kernel_tree / "boot" / f"vmlinuz-{self.kernel_version}", self.out / "vmlinuz")

    def debootstrap(self) -> None:
        rootfs.debootstrap(self.recipe, self.deb_cache, self.rootfs, self.mirror)

    def configure_rootfs(self) -> None:
        rootfs.install_modules(self.recipe, self.rootfs, self.kernel_tree, self.kernel_version)
        rootfs.install_overlay(self.recipe, self.rootfs)
        keys.install_ssh_keys(self.rootfs, self.out)

    def extract_kernel(self) -> None:
        vmlinux = kernel.extract_vmlinux((self.out / "vmlinuz").read_bytes())
        (self.out / "vmlinux").write_bytes(vmlinux)

    def build_initramfs(self) -> None:
        self.initramfs_modules = initramfs.build_initramfs(
            self.rootfs, self.kernel_version, self.recipe["initramfs_modules"], self.work / "initramfs",
            self.out / "initrd.img",
        )

    def make_ext4(self) -> None:
        self.rootfs_used = rootfs.make_ext4(self.recipe, self.rootfs, self.out / "rootfs.ext4")

    def write_manifest(self, digest: str, started: float) -> None:
        manifest = {
            "recipe_hash": digest,
            "builder_version": BUILDER_VERSION,
            "kernel_version": self.kernel_version,
            "kernel_deb": self.kernel_deb.name,
            "suite": self.recipe["suite"],
            "packages": self.recipe["packages"],
            "mirror": self.mirror,
            "initramfs_modules": self.initramfs_modules,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "step_seconds": self.timings,
            "rootfs_used_bytes": self.rootfs_used,
            "sizes": {name: (self.out / name).stat().st_size for name in ARTIFACTS},
        }
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

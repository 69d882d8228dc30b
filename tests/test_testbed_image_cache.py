"""testbed.image.cache: cache hits build nothing, failed builds leave nothing, build dirs are removed safely.

No root, no network, no QEMU boot: a build is stopped at its first check.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from rich.console import Console

from testbed.image import artifacts, cache, mirror
from testbed.image import build as image_build
from testbed.image.artifacts import ImageBuildError
from testbed.image.cache import ensure_image
from testbed.image.recipe import recipe_hash


def _fake_cached_image(cache_root):
    digest = recipe_hash()
    d = cache_root / "images" / digest
    d.mkdir(parents=True)
    for name in artifacts.ARTIFACTS:
        (d / name).write_bytes(b"x")
    (d / "manifest.json").write_text(json.dumps({"recipe_hash": digest, "kernel_version": "6.1.0-99-amd64"}))
    return d


def test_ensure_image_cache_hit_prints_one_line_and_builds_nothing(tmp_path, monkeypatch):
    d = _fake_cached_image(tmp_path)
    monkeypatch.setattr(image_build, "ImageBuilder", None)  # any build attempt would fail loudly
    out = io.StringIO()
    img = ensure_image(cache_root=tmp_path, console=Console(file=out, width=200))
    assert img.dir == d and img.kernel == d / "vmlinux" and img.kernel_version == "6.1.0-99-amd64"
    assert img.recipe_hash == recipe_hash()
    assert out.getvalue().count("\n") == 1 and "cached" in out.getvalue()


def test_incomplete_cache_entry_is_not_a_hit(tmp_path, monkeypatch):
    d = _fake_cached_image(tmp_path)
    (d / "rootfs.ext4").unlink()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="needs root"):
        ensure_image(cache_root=tmp_path, console=Console(file=io.StringIO()))


def test_ensure_image_without_mirror_raises_and_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(mirror, "system_apt_sources", lambda: [])
    with pytest.raises(ImageBuildError, match="no Debian mirror"):
        ensure_image(cache_root=tmp_path, console=Console(file=io.StringIO()))
    assert [p.name for p in (tmp_path / "images").iterdir()] == [".lock"]


def test_ensure_image_default_cache_root_follows_testbed_state(tmp_path, monkeypatch):
    monkeypatch.setenv("ISOSTACK_CACHE_DIR", str(tmp_path))
    d = _fake_cached_image(tmp_path)
    assert ensure_image(console=Console(file=io.StringIO())).dir == d


def test_ensure_image_names_missing_host_tools(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "debootstrap" else real_which(tool))
    with pytest.raises(ImageBuildError, match="needs debootstrap on the host"):
        ensure_image(cache_root=tmp_path, console=Console(file=io.StringIO()))


def test_mounts_left_in_a_build_dir_are_found_deepest_first(tmp_path):
    build = tmp_path / "my build"
    mountinfo = "\n".join(
        [
            "22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw",
            f"90 22 0:5 / {build}/rootfs/proc rw - proc proc rw".replace(" build", "\\040build"),
            f"91 22 0:6 / {build}/rootfs/dev rw - tmpfs nodev rw".replace(" build", "\\040build"),
            f"92 91 0:6 /null {build}/rootfs/dev/null rw - devtmpfs udev rw".replace(" build", "\\040build"),
            f"93 22 0:7 / {tmp_path}/my buildx/proc rw - proc proc rw".replace(" buildx", "\\040buildx"),
        ]
    )
    points = cache._mounts_under(build, mountinfo)
    assert points[0] == f"{build}/rootfs/dev/null"
    assert sorted(points) == sorted(f"{build}/rootfs/{p}" for p in ("proc", "dev", "dev/null"))

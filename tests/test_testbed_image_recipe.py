"""testbed.image.recipe: the recipe files and the hash that names a cache entry."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from testbed.image import recipe as image_recipe
from testbed.image.artifacts import ImageBuildError
from testbed.image.recipe import recipe_hash


@pytest.fixture
def recipe_copy(tmp_path):
    dst = tmp_path / "vm-images"
    shutil.copytree(image_recipe.RECIPE_DIR, dst)
    return dst


def test_recipe_hash_is_stable_and_location_independent(recipe_copy):
    assert recipe_hash() == recipe_hash()
    assert recipe_hash(recipe_copy) == recipe_hash()
    assert len(recipe_hash()) == 16


def test_recipe_hash_changes_with_recipe_content(recipe_copy):
    before = recipe_hash(recipe_copy)
    recipe = recipe_copy / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "  - strace\n")
    assert recipe_hash(recipe_copy) != before


def test_recipe_hash_covers_overlay_files_modes_and_new_files(recipe_copy):
    before = recipe_hash(recipe_copy)
    init = recipe_copy / "rootfs" / "sbin" / "isostack-init"
    init.write_text(init.read_text() + "# comment\n")
    edited = recipe_hash(recipe_copy)
    assert edited != before
    init.chmod(0o644)
    assert recipe_hash(recipe_copy) != edited
    init.chmod(0o755)
    assert recipe_hash(recipe_copy) == edited
    (recipe_copy / "rootfs" / "etc" / "motd").write_text("hi\n")
    assert recipe_hash(recipe_copy) != edited


def test_recipe_hash_covers_builder_version(monkeypatch):
    before = recipe_hash()
    monkeypatch.setattr(image_recipe, "BUILDER_VERSION", image_recipe.BUILDER_VERSION + "-next")
    assert recipe_hash() != before


def test_shipped_recipe_loads_and_lists_the_required_packages():
    recipe = image_recipe.load_recipe()
    for pkg in ("python3", "openssh-server", "iproute2", "ethtool", "iperf3", "sockperf", "kmod"):
        assert pkg in recipe["packages"]
    assert "ext4" in recipe["initramfs_modules"]


def test_load_recipe_reports_missing_keys(recipe_copy):
    (recipe_copy / "recipe.yaml").write_text("suite: bookworm\n")
    with pytest.raises(ImageBuildError, match="lacks the key 'variant'"):
        image_recipe.load_recipe(recipe_copy)


@pytest.mark.parametrize("script", ["initramfs/init", "rootfs/sbin/isostack-init", "rootfs/usr/local/sbin/poweroff"])
def test_init_scripts_are_executable_posix_sh(script):
    path = image_recipe.RECIPE_DIR / script
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True)

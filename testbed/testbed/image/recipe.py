"""The image recipe (vm-images/) and its hash, which names the cache entry an image is built into.

The hash covers every recipe file and BUILDER_VERSION, so any change to what goes into an image gives a new
cache entry instead of a stale hit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from testbed.image.artifacts import ImageBuildError

# Bump when the build steps change in a way that changes the produced image.
BUILDER_VERSION = "1"

RECIPE_DIR = Path(__file__).resolve().parents[3] / "vm-images"


def load_recipe(recipe_dir: Path = RECIPE_DIR) -> dict:
    """Read and sanity-check vm-images/recipe.yaml."""
    path = recipe_dir / "recipe.yaml"
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImageBuildError(f"cannot read image recipe {path}: {exc}") from exc
    for key in ("suite", "variant", "kernel_metapackage", "packages", "initramfs_modules"):
        if key not in recipe:
            raise ImageBuildError(f"image recipe {path} lacks the key {key!r}")
    return recipe


def recipe_hash(recipe_dir: Path = RECIPE_DIR) -> str:
    """Content hash of every recipe file (path, executable bit, bytes) and the builder version."""
    digest = hashlib.sha256(f"isostack-image-builder {BUILDER_VERSION}\n".encode())
    files = sorted(p for p in recipe_dir.rglob("*") if p.is_file())
    if not files:
        raise ImageBuildError(f"no recipe files in {recipe_dir}")
    for path in files:
        rel = path.relative_to(recipe_dir).as_posix()
        executable = os.access(path, os.X_OK)
        data = path.read_bytes()
        digest.update(f"{rel}\0{int(executable)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]

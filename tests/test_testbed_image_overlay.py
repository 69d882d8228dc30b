"""testbed.image.overlay: a guest's qcow2 disk on the image's rootfs."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from testbed_image_helpers import fake_guest_image

from testbed.image.overlay import create_overlay


@pytest.fixture
def fake_image(tmp_path):
    return fake_guest_image(tmp_path)


def test_create_overlay_backs_onto_the_rootfs(fake_image, tmp_path):
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed")
    with open(fake_image.rootfs, "wb") as f:
        f.truncate(4 * 2**20)
    path = create_overlay(fake_image, tmp_path / "guests" / "g1.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     capture_output=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(fake_image.rootfs)
    assert info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == 4 * 2**20

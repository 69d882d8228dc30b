"""Unit tests for the guest image builder: no root, no network, no QEMU boot."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import struct
import subprocess

import pytest
from rich.console import Console

from testbed import image
from testbed.image import (
    GuestImage,
    ImageBuildError,
    create_overlay,
    ensure_image,
    extract_vmlinux,
    find_debian_mirror,
    kernel_cmdline,
    module_load_order,
    recipe_hash,
)

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


@pytest.fixture
def recipe_copy(tmp_path):
    dst = tmp_path / "vm-images"
    shutil.copytree(image.RECIPE_DIR, dst)
    return dst


# --- recipe hash ------------------------------------------------------------------------------------------


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
    monkeypatch.setattr(image, "BUILDER_VERSION", image.BUILDER_VERSION + "-next")
    assert recipe_hash() != before


def test_shipped_recipe_loads_and_lists_the_required_packages():
    recipe = image.load_recipe()
    for pkg in ("python3", "openssh-server", "iproute2", "ethtool", "iperf3", "sockperf", "kmod"):
        assert pkg in recipe["packages"]
    assert "ext4" in recipe["initramfs_modules"]


def test_load_recipe_reports_missing_keys(recipe_copy):
    (recipe_copy / "recipe.yaml").write_text("suite: bookworm\n")
    with pytest.raises(ImageBuildError, match="lacks the key 'variant'"):
        image.load_recipe(recipe_copy)


@pytest.mark.parametrize("script", ["initramfs/init", "rootfs/sbin/isostack-init", "rootfs/usr/local/sbin/poweroff"])
def test_init_scripts_are_executable_posix_sh(script):
    path = image.RECIPE_DIR / script
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True)


# --- vmlinux extraction -----------------------------------------------------------------------------------


def _bzimage_like(payload: bytes, with_header: bool) -> bytes:
    """A blob shaped like a bzImage: setup sectors, decoy magic bytes, the payload, a trailer."""
    setup_sects = 3
    setup = bytearray((setup_sects + 1) * 512)
    if with_header:
        setup[0x1F1] = setup_sects
        setup[0x202:0x206] = b"HdrS"
    decompressor = b"\x1f\x8b\x08 not really gzip " + b"BZh9 nor bzip2" + b"\x5d\x00\x00 junk" * 10
    if with_header:
        struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload))
    return bytes(setup) + decompressor + payload + struct.pack("<I", len(FAKE_ELF)) + b"\xff" * 100


def _xz_x86(data: bytes) -> bytes:
    # Like the kernel's xz payload: x86 BCJ filter + LZMA2, CRC32 check.
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)


COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "xz": _xz_x86,
    "bzip2": bz2.compress,
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
}


@pytest.mark.parametrize("with_header", [True, False], ids=["boot-header", "magic-scan"])
@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_extract_vmlinux_finds_the_compressed_elf(fmt, with_header):
    blob = _bzimage_like(COMPRESSORS[fmt](FAKE_ELF), with_header)
    assert extract_vmlinux(blob) == FAKE_ELF


@pytest.mark.parametrize("tool", ["zstd", "lz4"])
def test_extract_vmlinux_with_command_line_decompressors(tool):
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed")
    args = [tool, "-c", "-q"] + (["-l"] if tool == "lz4" else [])  # the kernel uses lz4's legacy format
    payload = subprocess.run(args, input=FAKE_ELF, capture_output=True, check=True).stdout
    assert extract_vmlinux(_bzimage_like(payload, with_header=True)) == FAKE_ELF
    assert extract_vmlinux(_bzimage_like(payload, with_header=False)) == FAKE_ELF


def test_extract_vmlinux_skips_compressed_data_that_is_not_elf():
    decoy = gzip.compress(b"not a kernel" * 100, mtime=0)
    blob = _bzimage_like(decoy + _xz_x86(FAKE_ELF), with_header=False)
    assert extract_vmlinux(blob) == FAKE_ELF


def test_extract_vmlinux_without_kernel_raises():
    with pytest.raises(ImageBuildError, match="no compressed ELF kernel"):
        extract_vmlinux(_bzimage_like(gzip.compress(b"hello", mtime=0), with_header=True))


# --- apt mirror discovery ---------------------------------------------------------------------------------

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main contrib
"""


def test_mirror_from_deb822_skips_security_src_and_disabled():
    assert find_debian_mirror("bookworm", [("debian.sources", DEB822)]) == "http://mirror.example.org/debian"


def test_mirror_from_one_line_sources_list():
    text = """\
# deb http://commented.example.org/debian bookworm main
deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://one.example.org/debian bookworm main non-free
deb http://two.example.org/debian bookworm main
"""
    assert find_debian_mirror("bookworm", [("sources.list", text)]) == "https://one.example.org/debian"


def test_mirror_needs_suite_and_main_component():
    text = "deb http://a.example.org/debian trixie main\ndeb http://b.example.org/debian bookworm contrib\n"
    with pytest.raises(ImageBuildError, match="no Debian mirror for 'bookworm main'"):
        find_debian_mirror("bookworm", [("sources.list", text)])


def test_mirror_from_this_machines_apt_config_is_http():
    try:
        uri = find_debian_mirror("bookworm", image.system_apt_sources())
    except ImageBuildError:
        pytest.skip("this machine has no bookworm mirror configured")
    assert uri.startswith(("http://", "https://"))


# --- modules.dep ------------------------------------------------------------------------------------------

MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
"""  # noqa: E501


def test_module_load_order_puts_dependencies_first_and_skips_builtins():
    order = module_load_order(MODULES_DEP, ["virtio_pci", "virtio_blk", "crc32c-intel", "ext4", "sd_mod"])
    names = [p.rsplit("/", 1)[1] for p in order]
    assert sorted(names) == sorted(
        ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko", "virtio_blk.ko",
         "crc32c-intel.ko", "crc16.ko", "mbcache.ko", "jbd2.ko", "ext4.ko"]
    )  # fmt: skip
    assert len(names) == len(set(names))
    for before, after in [("virtio_ring.ko", "virtio.ko"), ("virtio.ko", "virtio_pci.ko"),
                          ("virtio_pci_modern_dev.ko", "virtio_pci.ko"), ("virtio.ko", "virtio_blk.ko"),
                          ("jbd2.ko", "ext4.ko"), ("crc16.ko", "ext4.ko")]:  # fmt: skip
        assert names.index(before) < names.index(after)


# --- kernel command line and input validation -------------------------------------------------------------


@pytest.fixture
def fake_image(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    return GuestImage(
        dir=d, kernel=d / "vmlinux", kernel_compressed=d / "vmlinuz", initrd=d / "initrd.img",
        rootfs=d / "rootfs.ext4", ssh_key=d / "id_ed25519", ssh_pubkey=d / "id_ed25519.pub",
        kernel_version="6.1.0-56-amd64", recipe_hash="0123456789abcdef",
    )  # fmt: skip


def test_kernel_cmdline_contract(fake_image):
    line = kernel_cmdline(
        fake_image, "guest-1", [("52:54:00:FF:00:01", "10.0.2.15/24"), ("52:54:00:aa:00:01", "10.10.0.1/24")]
    )
    words = line.split()
    for required in ("console=ttyS0", "quiet", "root=/dev/vda", "rw"):
        assert required in words
    assert "isostack.hostname=guest-1" in words
    assert words[-2:] == [
        "isostack.ifaddr=52:54:00:ff:00:01,10.0.2.15/24",
        "isostack.ifaddr=52:54:00:aa:00:01,10.10.0.1/24",
    ]


def test_kernel_cmdline_without_interfaces(fake_image):
    assert "isostack.ifaddr" not in kernel_cmdline(fake_image, "g", [])


@pytest.mark.parametrize(
    ("hostname", "ifaddrs", "message"),
    [
        ("bad_name", [], "invalid guest hostname 'bad_name'"),
        ("-lead", [], "invalid guest hostname"),
        ("a" * 64, [], "invalid guest hostname"),
        ("two words", [], "invalid guest hostname"),
        ("g", [("52:54:00:ff:00", "10.0.0.1/24")], "invalid MAC address '52:54:00:ff:00'"),
        ("g", [("52-54-00-ff-00-01", "10.0.0.1/24")], "invalid MAC address"),
        ("g", [("01:00:5e:00:00:01", "10.0.0.1/24")], "multicast bit"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.1")], r"expected <ip>/<prefix>"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.300/24")], "invalid interface address"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.1/33")], "invalid interface address"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.0/24")], "network or broadcast"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.255/24")], "network or broadcast"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.1/24"), ("52:54:00:FF:00:01", "10.0.1.1/24")], "given twice"),
    ],
)
def test_kernel_cmdline_rejects_bad_input(fake_image, hostname, ifaddrs, message):
    with pytest.raises(ValueError, match=message):
        kernel_cmdline(fake_image, hostname, ifaddrs)


def test_point_to_point_prefix_allows_both_addresses(fake_image):
    line = kernel_cmdline(fake_image, "g", [("52:54:00:00:00:02", "10.0.0.0/31")])
    assert line.endswith("isostack.ifaddr=52:54:00:00:00:02,10.0.0.0/31")


# --- cache behaviour --------------------------------------------------------------------------------------


def _fake_cached_image(cache_root):
    digest = recipe_hash()
    d = cache_root / "images" / digest
    d.mkdir(parents=True)
    for name in image.ARTIFACTS:
        (d / name).write_bytes(b"x")
    (d / "manifest.json").write_text(json.dumps({"recipe_hash": digest, "kernel_version": "6.1.0-99-amd64"}))
    return d


def test_ensure_image_cache_hit_prints_one_line_and_builds_nothing(tmp_path, monkeypatch):
    d = _fake_cached_image(tmp_path)
    monkeypatch.setattr(image, "_Builder", None)  # any build attempt would fail loudly
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
    monkeypatch.setattr(image, "system_apt_sources", lambda: [])
    with pytest.raises(ImageBuildError, match="no Debian mirror"):
        ensure_image(cache_root=tmp_path, console=Console(file=io.StringIO()))
    assert [p.name for p in (tmp_path / "images").iterdir()] == [".lock"]


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
    points = image._mounts_under(build, mountinfo)
    assert points[0] == f"{build}/rootfs/dev/null"
    assert sorted(points) == sorted(f"{build}/rootfs/{p}" for p in ("proc", "dev", "dev/null"))


def test_kernel_cmdline_extra_parameters(fake_image):
    line = kernel_cmdline(fake_image, "g", [], extra=["isolcpus=1", "nohz_full=1", "irqaffinity=0"])
    assert line.endswith("isolcpus=1 nohz_full=1 irqaffinity=0")
    assert line.index("isostack.hostname=g") < line.index("isolcpus=1")


@pytest.mark.parametrize(
    ("param", "message"),
    [("a b", "one word"), ("", "one word"), ('x="y"', "one word"), ("root=/dev/sda", "override"),
     ("isostack.hostname=x", "override"), ("console=tty0", "override")],
)  # fmt: skip
def test_kernel_cmdline_rejects_bad_extra_parameters(fake_image, param, message):
    with pytest.raises(ValueError, match=message):
        kernel_cmdline(fake_image, "g", [], extra=[param])


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


def test_unknown_initramfs_modules_are_reported():
    builtin = "kernel/drivers/virtio/virtio_mmio.ko\nkernel/lib/crc32.ko\n"
    wanted = ["virtio_blk", "crc32c-intel", "virtio_mmio", "crc32", "ext5"]
    assert image.unknown_modules(MODULES_DEP, builtin, wanted) == ["ext5"]

"""testbed.image.kernel: finding and decompressing the vmlinux inside a bzImage (no real kernel needed)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess

import pytest

from testbed.image.artifacts import ImageBuildError
from testbed.image.kernel import extract_vmlinux

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


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

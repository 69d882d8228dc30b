"""The guest kernel: Debian's kernel package, and the uncompressed vmlinux inside its bzImage.

The guests boot the uncompressed vmlinux directly (PVH), which is much faster under TCG than letting the
bzImage decompress itself; Debian ships only the bzImage, so the build extracts it as scripts/extract-vmlinux
does.
"""

from __future__ import annotations

import bz2
import lzma
import re
import struct
import subprocess
import zlib
from pathlib import Path
from typing import NamedTuple

from testbed.image.artifacts import ImageBuildError
from testbed.image.tools import run_tool


class KernelPackage(NamedTuple):
    """The kernel package a build unpacked: its version (e.g. 6.1.0-56-amd64), .deb and unpacked tree."""

    version: str
    deb: Path
    tree: Path


def fetch_kernel_package(metapackage: str, deb_cache: Path, tree: Path) -> KernelPackage:
    """Resolve ``metapackage`` to its linux-image package, download it (once, into ``deb_cache``), unpack it."""
    proc = run_tool(["apt-cache", "depends", metapackage], what=f"apt-cache depends {metapackage}")
    match = re.search(r"Depends: (linux-image-(\d[^\s]*-amd64))$", proc.stdout, re.M)
    if not match:
        raise ImageBuildError(f"cannot resolve the kernel package behind {metapackage}; run apt-get update")
    package, version = match.group(1), match.group(2)
    debs = sorted(deb_cache.glob(f"{package}_*.deb"))
    if not debs:
        run_tool(["apt-get", "download", "-q", package], what=f"apt-get download {package}", cwd=deb_cache)
        debs = sorted(deb_cache.glob(f"{package}_*.deb"))
    if not debs:
        raise ImageBuildError(f"apt-get download {package} produced no .deb in {deb_cache}")
    run_tool(["dpkg-deb", "-x", str(debs[-1]), str(tree)], what="dpkg-deb -x")
    return KernelPackage(version=version, deb=debs[-1], tree=tree)


# Magic bytes of the compressors a Linux bzImage payload can use.
_MAGICS = {
    "gzip": b"\x1f\x8b\x08",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x02\x21\x4c\x18",
    "bzip2": b"BZh",
    "lzma": b"\x5d\x00\x00",
}


def _decompress(fmt: str, data: bytes) -> bytes:
    """Decompress one stream of ``fmt`` at the start of ``data``, ignoring whatever follows it."""
    if fmt == "gzip":
        return zlib.decompressobj(wbits=31).decompress(data)
    if fmt == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if fmt == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if fmt == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    # No zstd/lz4 in the Python 3.11 standard library: use the command-line tools; they may complain
    # about trailing bytes after the stream, but what they wrote to stdout is the decompressed data.
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[fmt]
    try:
        proc = subprocess.run(tool, input=data, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{tool[0]} is needed to decompress this kernel") from exc
    return proc.stdout


def _payload_candidates(blob: bytes) -> list[tuple[int, int, str]]:
    """(offset, end, format) of possible compressed payloads, the boot header's own one first."""
    candidates = []
    # x86 boot protocol >= 2.08: payload_offset/payload_length at 0x248, relative to the protected-mode
    # code that starts after the (setup_sects + 1) * 512 bytes of real-mode setup.
    if len(blob) > 0x250 and blob[0x202:0x206] == b"HdrS":
        setup_sects = blob[0x1F1] or 4
        offset, length = struct.unpack_from("<II", blob, 0x248)
        start = (setup_sects + 1) * 512 + offset
        if length and start + length <= len(blob):
            for fmt, magic in _MAGICS.items():
                if blob.startswith(magic, start):
                    candidates.append((start, start + length, fmt))
    found = []
    for fmt, magic in _MAGICS.items():
        pos = blob.find(magic)
        while pos != -1:
            found.append((pos, len(blob), fmt))
            pos = blob.find(magic, pos + 1)
    return candidates + sorted(found)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the uncompressed ELF kernel inside a bzImage (what scripts/extract-vmlinux does)."""
    for start, end, fmt in _payload_candidates(bzimage):
        try:
            data = _decompress(fmt, bzimage[start:end])
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
            continue
        if data.startswith(b"\x7fELF"):
            return data
    raise ImageBuildError("no compressed ELF kernel found in the bzImage (gzip/xz/zstd/lz4/bzip2/lzma)")

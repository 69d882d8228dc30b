"""The compare-and-swap helper: a tiny C library (_atomics.c) loaded with ctypes.

Why native: CPython has no atomic read-modify-write on shared memory, and the per-socket command queue is
multi-producer (any thread or forked process of an application may post), so producers must claim a slot
with a CAS on the shared tail.  Everything else (ordered loads and stores on x86-64) stays in Python.
`python -m isostack.bench --queues` prints the measured cost (see the module docstring of queues.py).

The guest has no compiler, so the .so is built on the host (same architecture and glibc: x86-64 Debian 12)
next to the source and uploaded with the package.  `python -m isostack.native` (re)builds it; importing
this module builds it automatically when it is missing or older than the source and gcc is present.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_atomics.c"
LIBRARY = HERE / "_atomics.so"
CFLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Werror", "-std=c11"]


class NativeError(RuntimeError):
    """The atomics helper is missing and cannot be built here."""


def build(output: Path = LIBRARY) -> Path:
    """Compile _atomics.c into `output` with gcc (atomically replaced)."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise NativeError(
            f"{output.name} is missing and there is no C compiler here; build it on the host with "
            "`python -m isostack.native` before uploading isostack"
        )
    tmp = output.with_suffix(f".tmp{os.getpid()}.so")
    subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(SOURCE)], check=True)
    os.replace(tmp, output)
    return output


def _needs_build() -> bool:
    if not LIBRARY.exists():
        return True
    return SOURCE.exists() and SOURCE.stat().st_mtime > LIBRARY.stat().st_mtime and shutil.which("gcc") is not None


def load() -> ctypes.CDLL:
    """Load (building first if needed) the helper and declare its signatures."""
    if _needs_build():
        build()
    lib = ctypes.CDLL(str(LIBRARY))
    u64, ptr, i64 = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int64
    for name, res, args in (
        ("iso_cas64", ctypes.c_int, [ptr, u64, u64]),
        ("iso_xchg64", u64, [ptr, u64]),
        ("iso_fetch_add64", u64, [ptr, u64]),
        ("iso_fetch_or64", u64, [ptr, u64]),
        ("iso_load64", u64, [ptr]),
        ("iso_store64", None, [ptr, u64]),
        ("iso_fence", None, []),
        ("iso_mpsc_push", i64, [ptr, ptr, u64, ctypes.c_char_p]),
    ):
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


LIB = load()
cas64 = LIB.iso_cas64
xchg64 = LIB.iso_xchg64
fetch_add64 = LIB.iso_fetch_add64
fetch_or64 = LIB.iso_fetch_or64
load64 = LIB.iso_load64
store64 = LIB.iso_store64
fence = LIB.iso_fence
mpsc_push = LIB.iso_mpsc_push


# membarrier(2): the asymmetric fence.  The dispatcher pays one syscall where a Dekker handshake needs a
# fence on its side; the front-ends (registered processes) then need none on their hot path.
SYS_MEMBARRIER = 324  # x86-64
MEMBARRIER_CMD_QUERY = 0
MEMBARRIER_CMD_GLOBAL_EXPEDITED = 1 << 1
MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_int]


def membarrier_supported() -> bool:
    mask = _syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_QUERY, 0, 0)
    return mask > 0 and bool(mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED)


def membarrier_register() -> bool:
    """Front-end: let the dispatcher's membarrier() act as a full fence on our threads."""
    return _syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0


def membarrier() -> None:
    """Dispatcher: a full memory barrier on every running thread of every registered process."""
    if _syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0:
        fence()


def main() -> int:
    path = build()
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

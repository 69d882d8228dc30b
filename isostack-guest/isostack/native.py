"""Native helpers: a CPython extension (_fastpath.c) with the front-end fast path and the atomics, and, as a
fallback where the extension cannot load (another Python), the same atomics in a ctypes library (_atomics.c).

Why native: CPython has no atomic read-modify-write on shared memory, and the per-socket command queue is
multi-producer (any thread or forked process of an application may post), so producers must claim a slot
with a CAS on the shared tail.  Everything else (ordered loads and stores on x86-64) stays in Python.
`python -m isoperf.stackbench --queues` prints the measured cost (see the module docstring of queues.py).

Measured in a TCG guest: a ctypes call costs ~14 us, a Python-level 64-byte send ~120 us; the extension's
one-call send is what makes a small send cheaper than a kernel send() there (isoperf/stackbench.py prints both).
Since the per-socket Tx object (sock.send is its C method, no Python frame at all) the guest's bench shows
2.6 us of application CPU per 64-byte message, down from 10.6 us with the Python wrapper around FAST.send.

The guest has no compiler, so the .so files are built on the host (same architecture and glibc: x86-64 Debian 12)
next to the source and uploaded with the package.  `python -m isostack.native` (re)builds it; importing
this module builds it automatically when it is missing or older than the source and gcc is present.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import sysconfig
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


FAST_SOURCE = HERE / "_fastpath.c"
FAST_LIBRARY = HERE / ("_fastpath" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def _python_include() -> str:
    """Debian's headers when present (the guests run Debian's python3.11), else this interpreter's."""
    debian = f"/usr/include/python{sys.version_info.major}.{sys.version_info.minor}"
    return debian if os.path.exists(os.path.join(debian, "Python.h")) else sysconfig.get_paths()["include"]


def build_extension(source: Path, output: Path) -> Path:
    """Compile a CPython extension's single C file into `output` with gcc (atomically replaced)."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise NativeError(f"{output.name} is missing and there is no C compiler here")
    tmp = output.with_suffix(f".tmp{os.getpid()}.so")
    subprocess.run([cc, "-O2", "-fPIC", "-shared", "-Wall", "-Werror", f"-I{_python_include()}", "-o", str(tmp),
                    str(source)], check=True)
    os.replace(tmp, output)
    return output


def build_fast(output: Path = FAST_LIBRARY) -> Path:
    return build_extension(FAST_SOURCE, output)


def _stale(source: Path, lib: Path) -> bool:
    if not lib.exists():
        return True
    return source.exists() and source.stat().st_mtime > lib.stat().st_mtime and shutil.which("gcc") is not None


def _needs_build() -> bool:
    return _stale(SOURCE, LIBRARY)


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


def load_fast():
    """The extension module, or None (ISOSTACK_NO_FASTPATH=1, or it cannot be built or imported here)."""
    if os.environ.get("ISOSTACK_NO_FASTPATH"):
        return None
    try:
        if _stale(FAST_SOURCE, FAST_LIBRARY):
            build_fast()
        from . import _fastpath
    except (ImportError, NativeError, OSError, subprocess.CalledProcessError):
        return None
    from . import layout as L

    expected = (L.C_TX_TAIL, L.C_RX_HEAD, L.C_DRAINING, L.C_TX_HEAD, L.C_RX_TAIL, L.C_STATE, L.ST_CONNECTED,
                L.ST_ERROR)
    if _fastpath.layout() != expected:
        raise NativeError(f"_fastpath was built for another layout: {_fastpath.layout()} != {expected}")
    return _fastpath


FAST = load_fast()
if FAST is not None:
    LIB = None
    cas64, xchg64, fetch_add64, fetch_or64 = FAST.cas64, FAST.xchg64, FAST.fetch_add64, FAST.fetch_or64
    fence, mpsc_push, getcpu = FAST.fence, FAST.mpsc_push, FAST.getcpu
else:
    LIB = load()
    cas64 = LIB.iso_cas64
    xchg64 = LIB.iso_xchg64
    fetch_add64 = LIB.iso_fetch_add64
    fetch_or64 = LIB.iso_fetch_or64
    fence = LIB.iso_fence
    mpsc_push = LIB.iso_mpsc_push
    _sched_getcpu = ctypes.CDLL(None).sched_getcpu

    def getcpu() -> int:
        """The CPU the calling thread runs on (selects its notification ring)."""
        return max(0, _sched_getcpu())


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
    print(build())
    print(build_fast())
    return 0


if __name__ == "__main__":
    sys.exit(main())

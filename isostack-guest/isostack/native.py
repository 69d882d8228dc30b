"""Native helpers: a CPython extension (_fastpath.c) with the front-end fast path and the atomics, and, as a
fallback where the extension cannot load (another Python), the same atomics in a ctypes library (_atomics.c).

Why native: CPython has no atomic read-modify-write on shared memory, and the per-socket command queue is
multi-producer (any thread or forked process of an application may post), so producers must claim a slot
with a CAS on the shared tail.  Everything else (ordered loads and stores on x86-64) stays in Python.
`python -m isoperf.stackbench --queues` prints the measured cost (see the module docstring of queues.py).

isostackd's per-message steps (tx drain, rx fill, notification post) are a second extension, _dispatch.c
(load_dispatch; the dispatcher runs their Python reference, dispatcher/ringio.py, without it).

The guests have no compiler: the parts are built on the host when the project is installed (setup.py puts them
next to their sources) and uploaded with the package.  Importing this module only loads them, it never
compiles; `python -m isostack.native` says which parts load here.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "_atomics.so"
BUILD_COMMAND = "`make native` (or `pip install -e .`) on a host with a C compiler"


class NativeError(RuntimeError):
    """The native parts are not built here, or were built for another shared-memory layout."""


def load() -> ctypes.CDLL:
    """Load the atomics library (_atomics.so) and declare its signatures."""
    if not LIBRARY.exists():
        raise NativeError(f"isostack's native parts are not built ({LIBRARY.name} and _fastpath are missing in "
                          f"{HERE}); build them with {BUILD_COMMAND}")
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
    """The extension module, or None (ISOSTACK_NO_FASTPATH=1, or it is not built or does not import here)."""
    if os.environ.get("ISOSTACK_NO_FASTPATH"):
        return None
    try:
        from . import _fastpath
    except ImportError:
        return None
    from . import layout as L

    expected = (L.C_TX_TAIL, L.C_RX_HEAD, L.C_DRAINING, L.C_TX_HEAD, L.C_RX_TAIL, L.C_STATE, L.ST_CONNECTED,
                L.ST_ERROR)
    if _fastpath.layout() != expected:
        raise NativeError(f"_fastpath was built for another layout: {_fastpath.layout()} != {expected}; rebuild "
                          f"it with {BUILD_COMMAND}")
    return _fastpath


def load_dispatch():
    """isostackd's hot-path extension (_dispatch.c), or None (ISOSTACK_NO_DISPATCH_C=1: the Python reference in
    dispatcher/ringio.py runs instead; or it is not built or does not import here)."""
    if os.environ.get("ISOSTACK_NO_DISPATCH_C"):
        return None
    try:
        from . import _dispatch
    except ImportError:
        return None
    from . import layout as L

    expected = (L.C_TX_TAIL, L.C_RX_HEAD, L.C_TX_HEAD, L.C_RX_TAIL, L.R_HEAD, L.R_TAIL, L.R_DROPPED,
                L.NOTIF_ENTRY.size)
    if _dispatch.layout() != expected:
        raise NativeError(f"_dispatch was built for another layout: {_dispatch.layout()} != {expected}; rebuild "
                          f"it with {BUILD_COMMAND}")
    return _dispatch


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
    """Say which native parts load here (the guests have no compiler: this checks an upload). Where neither
    _fastpath nor _atomics is there, importing this module already failed with the command that builds them."""
    fast = load_fast()
    print(f"_fastpath: {fast.__file__ if fast is not None else 'not loaded'}")
    print(f"_atomics: {LIBRARY if LIBRARY.exists() else 'missing'}")
    dispatch = load_dispatch()
    print(f"_dispatch: {dispatch.__file__ if dispatch is not None else 'not loaded (isostackd runs its Python path)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The C send loop (_sendloop.c, a CPython extension): finding, building and choosing it.

The guests have no compiler, so the extension is built on the host (same architecture and glibc) next to its
source and uploaded with the package: ``python3 -m isoperf.sendloop`` builds it; `load` builds it first where
it is missing or older than the source and gcc is present (host, tests).  Where it cannot be built or
imported (no .so uploaded, another Python) isoperf loops in Python and says so in its result (send_loop).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from .errors import IsoperfError

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_sendloop.c"
LIBRARY = HERE / ("_sendloop" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
SEND_LOOPS = ("auto", "c", "python")
_LOADED: list = []  # the loaded C function (or None), once


class BuildError(RuntimeError):
    """The extension cannot be built here (no C compiler)."""


def _python_include() -> str:
    """Debian's headers when present (the guests run Debian's python3.11), else this interpreter's."""
    debian = f"/usr/include/python{sys.version_info.major}.{sys.version_info.minor}"
    return debian if os.path.exists(os.path.join(debian, "Python.h")) else sysconfig.get_paths()["include"]


def build(output: Path = LIBRARY) -> Path:
    """Compile _sendloop.c into `output` with gcc (atomically replaced)."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise BuildError(f"{output.name} is missing and there is no C compiler here")
    tmp = output.with_suffix(f".tmp{os.getpid()}.so")
    subprocess.run([cc, "-O2", "-fPIC", "-shared", "-Wall", "-Werror", f"-I{_python_include()}", "-o", str(tmp),
                    str(SOURCE)], check=True)
    os.replace(tmp, output)
    return output


def _stale() -> bool:
    if not LIBRARY.exists():
        return True
    return SOURCE.exists() and SOURCE.stat().st_mtime > LIBRARY.stat().st_mtime and shutil.which("gcc") is not None


def _load_module():
    """The extension module, or None where it cannot be built or imported."""
    try:
        if _stale():
            build()
        from . import _sendloop
    except (ImportError, BuildError, OSError, subprocess.CalledProcessError):
        return None
    return _sendloop


def load():
    """isoperf's C send loop function `send_loop(sendall, msg, stop, counter)`, or None (see the module)."""
    if not _LOADED:
        mod = _load_module()
        _LOADED.append(mod.send_loop if mod is not None else None)
    return _LOADED[0]


def resolve(choice: str) -> str:
    """auto -> c where the C loop loads, else python; c where it does not load is an error."""
    if choice not in SEND_LOOPS:
        raise IsoperfError(f"unknown send loop {choice!r} (one of {', '.join(SEND_LOOPS)})")
    if choice == "python":
        return "python"
    if load() is not None:
        return "c"
    if choice == "c":
        raise IsoperfError("the C send loop is not available here (isoperf/_sendloop*.so is neither built nor "
                           "buildable: run `python3 -m isoperf.sendloop` on a host with gcc)")
    return "python"


def main() -> int:
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())

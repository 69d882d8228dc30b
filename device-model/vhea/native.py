"""The native datapath: _datapath.c, a CPython extension built with gcc at import when missing or older than
its source, and the Python path (vring.py / net.py) as the reference and the fallback.

`vhea serve --datapath native|python|auto` chooses; auto (the default) takes native when it loads. The C
code does the same checked walk as the Python code, with the same error texts (tests/test_vhea_hostile.py
and tests/test_vhea_native.py run the hostile rings through both). The built module goes to __pycache__
next to the source (git ignores it), or, where that is not writable, to ~/.cache/vhea.

`python -m vhea.native` (re)builds it and says where.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_datapath.c"
NAME = "_datapath"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
CFLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Werror", "-std=gnu11"]
DATAPATHS = ("auto", "native", "python")

#: why the native datapath is not there (None when it loaded)
why_not: str | None = None


class NativeError(RuntimeError):
    """The native datapath cannot be built or loaded here."""


def _include() -> str:
    inc = sysconfig.get_paths()["include"]
    if os.path.exists(os.path.join(inc, "Python.h")):
        return inc
    debian = f"/usr/include/python{sys.version_info.major}.{sys.version_info.minor}"
    return debian


def _targets() -> list[Path]:
    return [HERE / "__pycache__" / (NAME + SUFFIX), Path.home() / ".cache" / "vhea" / (NAME + SUFFIX)]


def build(output: Path | None = None) -> Path:
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise NativeError("no C compiler (gcc) here")
    errors = []
    for out in [output] if output else _targets():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
            p = subprocess.run([cc, *CFLAGS, f"-I{_include()}", "-o", str(tmp), str(SOURCE)], capture_output=True,
                               text=True)
            if p.returncode != 0:
                raise NativeError(f"gcc failed: {p.stderr.strip()[-500:]}")
            os.replace(tmp, out)
            return out
        except OSError as e:
            errors.append(f"{out}: {e}")
    raise NativeError("cannot write the module: " + "; ".join(errors))


def _fresh(lib: Path) -> bool:
    return lib.exists() and (not SOURCE.exists() or lib.stat().st_mtime >= SOURCE.stat().st_mtime)


def load():
    """The extension module, or None (then `why_not` says why)."""
    global why_not
    if os.environ.get("VHEA_NO_NATIVE"):
        why_not = "VHEA_NO_NATIVE is set"
        return None
    try:
        lib = next((t for t in _targets() if _fresh(t)), None)
        if lib is None:
            lib = build()
        loader = importlib.machinery.ExtensionFileLoader(f"vhea.{NAME}", str(lib))
        spec = importlib.util.spec_from_file_location(f"vhea.{NAME}", str(lib), loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
    except (NativeError, ImportError, OSError, subprocess.SubprocessError) as e:
        why_not = str(e)
        return None
    why_not = None
    return mod


MOD = load()


def resolve(choice: str | None) -> str:
    """'native' or 'python' for a --datapath choice; NativeError when native was asked for and is not there."""
    choice = choice or "auto"
    if choice not in DATAPATHS:
        raise NativeError(f"datapath must be one of {', '.join(DATAPATHS)}, not {choice!r}")
    if choice == "python":
        return "python"
    if MOD is None:
        if choice == "native":
            raise NativeError(f"the native datapath is not available: {why_not}")
        log.warning("native datapath not available (%s); using the Python datapath", why_not)
        return "python"
    return "native"


if __name__ == "__main__":
    print(build())

"""The native datapath: _datapath.c, a CPython extension built when the project is installed (setup.py), and the
Python path (vring.py / net.py) as the reference and the fallback.

`vhea serve --datapath native|python|auto` chooses; auto (the default) takes native when it loads. The C
code does the same checked walk as the Python code, with the same error texts (tests/test_vhea_hostile.py
and tests/test_vhea_native.py run the hostile rings through both). Importing this module only loads the built
extension, it never compiles: where it is missing (installed without a C compiler), `why_not` names the
command that builds it.

`python -m vhea.native` says whether it loads, and from where.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "_datapath.c"
BUILD_COMMAND = "`make native` (or `pip install -e .`) on a machine with a C compiler"
DATAPATHS = ("auto", "native", "python")

#: why the native datapath is not there (None when it loaded)
why_not: str | None = None


class NativeError(RuntimeError):
    """The native datapath is not available here."""


def load():
    """The extension module, or None (then `why_not` says why)."""
    global why_not
    if os.environ.get("VHEA_NO_NATIVE"):
        why_not = "VHEA_NO_NATIVE is set"
        return None
    try:
        _datapath = importlib.import_module(f"{__package__}._datapath")
    except ModuleNotFoundError:
        why_not = f"vhea._datapath is not built; build it with {BUILD_COMMAND}"
        return None
    except ImportError as e:
        why_not = f"vhea._datapath does not load ({e}); rebuild it with {BUILD_COMMAND}"
        return None
    why_not = None
    built = Path(_datapath.__file__)
    if SOURCE.exists() and int(SOURCE.stat().st_mtime) > int(built.stat().st_mtime):  # setuptools keeps whole seconds
        log.warning("%s is older than %s; rebuild it with %s", built.name, SOURCE.name, BUILD_COMMAND)
    return _datapath


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
    print(MOD.__file__ if MOD is not None else f"not available: {why_not}")
    sys.exit(0 if MOD is not None else 1)

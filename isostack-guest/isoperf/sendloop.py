"""The C send loop (_sendloop.c, a CPython extension): loading and choosing it.

The guests have no compiler: installing the project builds the extension on the host next to its source
(setup.py; `make native` rebuilds it) and the harness uploads it with the package.  Importing this module
never compiles.  Where the extension is not there or does not import (another Python) isoperf loops in Python
and says so in its result (send_loop).
"""

from __future__ import annotations

from .errors import IsoperfError

SEND_LOOPS = ("auto", "c", "python")
_LOADED: list = []  # the loaded C function (or None), once


def _load_module():
    """The extension module, or None where it is not built or does not import."""
    try:
        from . import _sendloop
    except ImportError:
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
        raise IsoperfError("the C send loop is not available here (isoperf/_sendloop*.so is not built: run "
                           "`make native` on the host; the harness uploads it with the package)")
    return "python"

"""The OSError the front-end raises, worded as the kernel's own (strerror) plus what it was about."""

from __future__ import annotations

import os


def os_error(code: int, what: str = "") -> OSError:
    msg = os.strerror(code) + (f" ({what})" if what else "")
    return OSError(code, msg)

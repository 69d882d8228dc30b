"""The rich console the CLIs print through."""

from __future__ import annotations

import sys

from rich.console import Console

# Width used when stdout is not a terminal (logs, pipes, CI): rich would assume 80 columns and
# squeeze result tables into unreadable ellipses.
PIPE_WIDTH = 140


def make_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)

"""The rich console the CLIs print through, and how tables reach a pipe or a log whole."""

from __future__ import annotations

import sys

from rich.console import Console, RenderableType

# Width used when stdout is not a terminal (logs, pipes, CI): rich would assume 80 columns and
# squeeze log lines; tables are printed at their own width there (print_whole).
PIPE_WIDTH = 140
_UNBOUNDED = 100_000


def make_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def print_whole(console: Console, renderable: RenderableType) -> None:
    """Print a table: fitted to the window on a terminal, at its full natural width anywhere else (a pipe, a
    CI log, a file), so no cell is cut to "stream…" by a width nobody will see. Only the table is widened:
    log lines keep the console's width (rich pads them to it)."""
    if console.is_terminal:
        console.print(renderable)
        return
    natural = console.measure(renderable, options=console.options.update_width(_UNBOUNDED)).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(renderable)
    finally:
        console.width = width

"""The one error type isoperf reports to its user as a single line, without a traceback."""

from __future__ import annotations


class IsoperfError(Exception):
    """An error to report to the user as one line, without a traceback."""

"""The harness's one error type, low enough that every part of a run can raise it without importing the runner."""

from __future__ import annotations


class HarnessError(RuntimeError):
    """A run that cannot start (no testbed, bad playbook, unknown guest): one clear message."""

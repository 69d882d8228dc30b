"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture
def sockdir():
    """A short temporary directory for vhost-user sockets (unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="vh", dir="/tmp")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)

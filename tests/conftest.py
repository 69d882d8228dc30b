"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from vm_helpers import Testbed


@pytest.fixture
def sockdir():
    """A short temporary directory for vhost-user sockets (unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="vh", dir="/tmp")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


@pytest.fixture
def processes(sockdir):
    """The processes a test starts on `sockdir` (QEMU, vhea) are appended here: after the test they are stopped,
    the last started first (SIGTERM, SIGKILL after 10 s), before `sockdir` is removed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="module")
def testbed_up_args() -> list[str]:
    """The `testbed up` flags of a module's testbed (a module overrides this fixture, e.g. `--queues 2`)."""
    return []


@pytest.fixture(scope="module")
def testbed(request, tmp_path_factory, testbed_up_args):
    """A testbed of the test module's own (`vm` tests): `testbed up` in a fresh state dir before its first test
    that asks for it, `testbed down` after its last test, whatever happened."""
    bed = Testbed(tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_")))
    try:
        bed.up(*testbed_up_args)
        yield bed
    finally:
        bed.down()


@pytest.fixture(scope="module")
def topology(testbed):
    """The topology (testbed.state.Topology) as `testbed up` left the module's testbed."""
    return testbed.topology()

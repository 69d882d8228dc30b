"""testbed.devicemodel: the testbed's `vhea serve` process."""

from __future__ import annotations

import subprocess
import sys

from testbed import devicemodel


def test_device_model_stop_never_signals_a_foreign_process():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        devicemodel.stop(other.pid, timeout_s=0.5)  # not a vhea: must be left alone
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()

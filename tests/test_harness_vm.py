"""The smoke benchmark against a running testbed (`testbed up`); skipped when none is up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from testbed import state
from testbed.harness import results
from testbed.harness.runner import run_benchmark

pytestmark = pytest.mark.vm

SHORT_SMOKE = """\
version: 1
name: vm-smoke
tests:
  - name: stream-1448
    test: stream
    size: 1448
    duration: 3
    warmup: 1
    verify: true
    port: 5799  # not the default, so a benchmark someone else runs on the same testbed does not collide
"""


def test_stream_between_guests_crosses_the_device_model(tmp_path):
    sdir = state.state_dir(os.environ.get("ISOSTACK_STATE_DIR"))
    if not state.topology_path(sdir).exists():
        pytest.skip(f"no testbed is up ({state.topology_path(sdir)} missing); run `testbed up`")
    pb = tmp_path / "smoke.yaml"
    pb.write_text(SHORT_SMOKE)
    run_json, bad = run_benchmark(pb, sdir, tmp_path / "results", Console(file=open(os.devnull, "w")))
    run = results.load_run(Path(run_json))
    (case,) = run["cases"]
    assert case["status"] == "ok", case["error"]
    assert case["isoperf"]["verified"] is True
    assert case["isoperf"]["bytes"] > 0
    assert case["device_model"]["crossed"] is True, case["device_model"]
    assert bad == 0

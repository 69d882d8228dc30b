"""The datapath alone, in one process (vhea.microbench): every frame forwarded on both datapaths."""

from __future__ import annotations

import pytest

from vhea import microbench, native

#: the datapaths `vhea bench` measures side by side here
DATAPATHS = ["native", "python"] if native.MOD is not None else ["python"]


@pytest.mark.parametrize("kind, size", [("plain", 64), ("plain", 1518), ("tso", 0)])
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_inprocess_datapath_figures(datapath, kind, size):
    """The datapath-alone measurement forwards every frame (it checks counts, drops and the bytes itself)."""
    m = microbench.measure(datapath, kind, size, rounds=3)
    assert m["datapath"] == datapath and m["frames"] == 8 * m["batch"] > 0
    assert m["us_per_frame"] > 0 and m["fps_per_core"] == pytest.approx(1e6 / m["us_per_frame"])
    assert m["tx_pull_us"] > 0 and m["rx_write_us"] > 0

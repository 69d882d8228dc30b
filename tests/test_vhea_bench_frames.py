"""The frames the benches send (vhea.bench_frames)."""

from __future__ import annotations

from vhea import offload
from vhea.bench_frames import tso_test_frame


def test_tso_test_frame_is_a_valid_tcp_frame():
    f = tso_test_frame(3000)
    h = offload.parse(f)
    assert (h.l3, h.l4, h.l4_end, h.proto) == (14, 34, 66, 6)
    assert offload.verify_ipv4_header(f, 14)
    assert len(f) == 66 + 3000

"""MRG_RXBUF with zero-length rx buffers: a ring error for that queue, not a scan of the whole avail ring for
every frame (issue 12, vhea point 7), on both datapaths of a real `vhea serve` process."""

from __future__ import annotations

import os
import select

import pytest
from vhea_helpers import BCAST, MAC_A, frame, receive_n, serve_frontend, serve_stats, timed_exchange, vhea_serve

from vhea import native
from vhea.protocol import VIRTIO_NET_F_MRG_RXBUF, bit


@pytest.mark.parametrize("datapath", ["python", "native"])
def test_zero_length_mergeable_rx_buffers_stop_that_queue(sockdir, datapath):
    if datapath == "native" and native.MOD is None:
        pytest.skip(f"native datapath not available: {native.why_not}")
    with vhea_serve(sockdir, ["a", "b", "c"], datapath=datapath):
        a, b, c = (serve_frontend(sockdir, p) for p in "abc")
        try:
            for fe in (a, b, c):
                fe.handshake()
            assert c.features & bit(VIRTIO_NET_F_MRG_RXBUF)
            a.post_rx()
            b.post_rx()
            c.post_rx(size=0)  # every rx buffer of c holds nothing
            sent = [frame(BCAST, MAC_A, i) for i in range(20)]
            for f in sent:
                a.send_frame(f)
            assert receive_n(b, 20) == sent  # b gets them all
            err = c.rx_ring().err
            assert select.select([err], [], [], 5)[0], "c's rx queue was not stopped"
            assert os.eventfd_read(err) == 1
            b.post_rx()
            timed_exchange(a, b, 100)
            st = serve_stats(sockdir)
            assert st["datapath"] == datapath
            assert st["ports"]["c"]["connected"]
        finally:
            for fe in (a, b, c):
                fe.close()

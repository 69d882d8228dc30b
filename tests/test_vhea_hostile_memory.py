"""A front-end that shrinks its guest memory file after SET_MEM_TABLE loses its port; vhea does not die of
SIGBUS and the other ports keep forwarding (issue 12, vhea point 2), on both datapaths of a real `vhea serve`.

Sealing cannot be required: QEMU's memory-backend-memfd seals (F_SEAL_SHRINK), but memory-backend-file, DPDK's
--no-huge memfd and vhea's own front-end do not. So unsealed regions are guarded (_datapath.c, SIGBUS guard).
"""

from __future__ import annotations

import fcntl
import mmap
import os

import pytest
from vhea_helpers import (
    BCAST,
    MAC_A,
    frame,
    receive_n,
    serve_frontend,
    serve_stats,
    timed_exchange,
    vhea_serve,
    wait_for,
)

from vhea import native


@pytest.mark.parametrize("datapath", ["python", "native"])
@pytest.mark.parametrize("ring", ["rx", "tx"])
def test_a_front_end_that_truncates_its_memory_loses_its_port_only(sockdir, datapath, ring):
    if native.MOD is None:
        pytest.skip(f"the SIGBUS guard needs the native module: {native.why_not}")
    with vhea_serve(sockdir, ["a", "b", "c"], datapath=datapath) as proc:
        a, b, c = (serve_frontend(sockdir, p) for p in "abc")
        try:
            for fe in (a, b, c):
                fe.handshake()
                fe.post_rx()
            timed_exchange(a, b, 1)
            os.ftruncate(c.memfd, 0)  # c's memory is gone under vhea's mapping; c must not touch it either
            if ring == "rx":
                a.send_frame(frame(BCAST, MAC_A, 2))  # vhea writes c's rx ring
                assert len(receive_n(b, 1)) == 1
                b.post_rx()
            else:
                c.kick(c.tx_ring())  # vhea reads c's tx ring
            assert c.closed_by_peer(timeout=5)
            assert proc.poll() is None, "vhea died"
            for tag in range(3, 8):
                timed_exchange(a, b, tag)
            assert wait_for(lambda: serve_stats(sockdir)["ports"]["c"]["closed"] == {"memory truncated": 1})
        finally:
            for fe in (a, b, c):
                fe.close()


def test_a_sealed_memfd_is_taken_as_is(sockdir):
    """QEMU's memory-backend-memfd seals its memfd (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL): that works."""
    with vhea_serve(sockdir, ["a", "b"]):
        a, b = serve_frontend(sockdir, "a"), serve_frontend(sockdir, "b")
        try:
            for fe in (a, b):
                fe.mem16.release()  # the front-end's memory, again, on a memfd that allows sealing
                fe.mem.close()
                os.close(fe.memfd)
                fe.memfd = os.memfd_create("sealed-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                os.ftruncate(fe.memfd, fe.mem_size)
                fe.mem = mmap.mmap(fe.memfd, fe.mem_size, flags=mmap.MAP_SHARED)
                fe.mem16 = memoryview(fe.mem).cast("H")
                fcntl.fcntl(fe.memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
                fe.handshake()
                fe.post_rx()
            with pytest.raises(PermissionError):
                os.ftruncate(a.memfd, 0)
            timed_exchange(a, b, 1)
        finally:
            a.close()
            b.close()

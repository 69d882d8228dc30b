"""A front-end that grows a ring with SET_VRING_NUM after SET_VRING_ADDR loses that ring or its port, never vhea
(issue 12, vhea point 1), on both datapaths of a real `vhea serve`: the ring's views were mapped for the old
size, and the next kick used to raise out of the tx service and end the loop.
"""

from __future__ import annotations

import pytest
from vhea_helpers import (
    DATAPATHS,
    MAC_A,
    MAC_C,
    frame,
    frontend,
    running_server,
    serve_frontend,
    serve_stats,
    timed_exchange,
    vhea_serve,
    wait_for,
)

from vhea import native
from vhea.protocol import Request, VringState
from vhea.server import loop as server_module
from vhea.vring import RingError, Vring


@pytest.mark.parametrize("datapath", DATAPATHS)
@pytest.mark.parametrize("restart", [False, True], ids=["started", "stopped-first"])
def test_set_vring_num_after_set_vring_addr_does_not_kill_vhea(sockdir, datapath, restart):
    if datapath == "native" and native.MOD is None:
        pytest.skip(f"native datapath not available: {native.why_not}")
    with vhea_serve(sockdir, ["a", "b", "c"], datapath=datapath) as proc:
        a, b, c = (serve_frontend(sockdir, p) for p in "abc")
        try:
            for fe in (a, b, c):
                fe.handshake()
                fe.post_rx()
            timed_exchange(a, b, 1)
            tx = c.tx_ring()
            if restart:  # as QEMU stops a ring before it reconfigures it; then the kick starts it again
                c.get_vring_base(tx.index)
            c.send(Request.SET_VRING_NUM, VringState(tx.index, 4 * tx.num).pack())  # views are for tx.num
            if restart:
                c.send(Request.SET_VRING_KICK, tx.index.to_bytes(8, "little"), [tx.kick])
            for tag in range(10):
                c.send_frame(frame(MAC_A, MAC_C, 100 + tag))  # each one kicks
            for tag in range(2, 8):
                timed_exchange(a, b, tag)
            assert proc.poll() is None, "vhea died"
            stats = serve_stats(sockdir)
            assert stats["ports"]["a"]["closed"] == {} and stats["ports"]["b"]["closed"] == {}
            if not restart:  # a started ring is not resized: the front-end broke the protocol
                assert c.closed_by_peer(timeout=5)
                assert wait_for(lambda: serve_stats(sockdir)["ports"]["c"]["closed"] == {"protocol error": 1})
        finally:
            for fe in (a, b, c):
                fe.close()


def test_heads_never_returns_fewer_heads_than_asked():
    """A view shorter than the ring (the bug above) is a RingError, not a silently short batch."""
    ring = Vring(1, num=1024)
    ring._avail = memoryview(bytearray(6 + 2 * 256)).cast("H")  # mapped for 256 entries
    assert len(ring.heads(4)) == 4
    with pytest.raises(RingError):
        ring.heads(4, offset=254)
    with pytest.raises(RingError):
        ring.heads(4, offset=1022)


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_an_internal_error_on_one_port_closes_that_port_only(sockdir, monkeypatch, datapath):
    """The loop's last line of defence: a bug on one port's tx path closes that port, counted, and vhea goes on."""
    if datapath == "native" and native.MOD is None:
        pytest.skip(f"native datapath not available: {native.why_not}")
    monkeypatch.setattr(server_module, "DEFAULT_DATAPATH", datapath)
    service_tx = server_module.Server._service_tx

    def buggy(self, port, ring):
        if port.name == "c":
            raise ValueError("injected bug")
        return service_tx(self, port, ring)

    monkeypatch.setattr(server_module.Server, "_service_tx", buggy)
    with running_server(sockdir, ["a", "b", "c"]) as server:
        with frontend(server, "a") as a, frontend(server, "b") as b, frontend(server, "c") as c:
            for fe in (a, b, c):
                fe.handshake()
                fe.post_rx()
            c.send_frame(frame(MAC_A, MAC_C, 1))
            assert c.closed_by_peer(timeout=5)
            for tag in range(2, 6):
                timed_exchange(a, b, tag)
            assert wait_for(lambda: server.ports["c"].closed == {"internal error": 1})
            assert server.ports["a"].closed == {} and server.ports["b"].closed == {}

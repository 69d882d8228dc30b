"""The back-end driven by the package's own vhost-user front-end over real Unix sockets (no VM)."""

from __future__ import annotations

import logging
import time

import pytest
from vhea_helpers import (
    BCAST,
    MAC_A,
    MAC_B,
    MAC_C,
    datapath,  # noqa: E402,F401  (the fixture)
    frame,
    frontend,
    receive_n,
    running_server,
    wait_for,
)

from vhea.frontend import BUF_SIZE, Frontend
from vhea.protocol import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    ProtocolFeature,
    Request,
    bit,
)
from vhea.vring import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT

# every test here runs on both datapaths (the Python reference and _datapath.c)
pytestmark = pytest.mark.usefixtures("datapath")


def test_handshake_offers_and_accepts_features(sockdir):
    with running_server(sockdir, ["a"]) as server, frontend(server, "a") as fe:
        fe.connect()
        offered = fe.get_u64(Request.GET_FEATURES)
        for b in (VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_INDIRECT_DESC,
                  VIRTIO_RING_F_EVENT_IDX, VHOST_USER_F_PROTOCOL_FEATURES):
            assert offered & bit(b)
        assert not offered & bit(VIRTIO_NET_F_MQ)  # one queue pair: no MQ
        proto = fe.get_u64(Request.GET_PROTOCOL_FEATURES)
        assert proto & bit(ProtocolFeature.REPLY_ACK)
        assert not proto & bit(ProtocolFeature.MQ)
        fe.close()
        fe2 = Frontend(server.ports["a"].path)
        try:
            fe2.handshake()  # uses NEED_REPLY + REPLY_ACK on every request and checks each ack
            assert wait_for(lambda: server.ports["a"].handler is not None
                            and all(r.ready for r in server.ports["a"].handler.device.rings))
            assert server.stats()["ports"]["a"]["connected"] is True
        finally:
            fe2.close()


def test_mq_offered_with_several_pairs(sockdir):
    with running_server(sockdir, ["a", "b"], queue_pairs=4) as server, \
            frontend(server, "a", queue_pairs=4) as fe, frontend(server, "b", queue_pairs=4) as b:
        fe.connect()
        assert fe.get_u64(Request.GET_FEATURES) & bit(VIRTIO_NET_F_MQ)
        assert fe.get_u64(Request.GET_PROTOCOL_FEATURES) & bit(ProtocolFeature.MQ)
        assert fe.get_u64(Request.GET_QUEUE_NUM) == 4
        fe.handshake()
        b.handshake()
        b.post_rx(pair=0)
        assert len(server.stats()["ports"]["a"]["queues"]) == 8
        f = frame(BCAST, MAC_A, 1)
        fe.send_frame(f, pair=3)  # tx ring 7
        assert receive_n(b, 1, pair=0) == [f]
        assert server.stats()["ports"]["a"]["queues"][7]["frames"] == 1


def test_frames_arrive_byte_identical_and_counters_match(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, \
            frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        sent = [frame(MAC_B, MAC_A, i, size=60 + 7 * i) for i in range(100)]
        for i, f in enumerate(sent):
            a.send_frame(f, split=5 if i % 3 == 0 else 0)  # some as 2-descriptor chains
            if i % 50 == 49:
                assert wait_for(lambda: a.reclaim(a.tx_ring()) >= 0 and len(a.tx_ring().free) > 200)
        got = receive_n(b, len(sent))
        assert got == sent
        st = server.stats()
        assert st["ports"]["a"]["from_guest_frames"] == 100
        assert st["ports"]["a"]["from_guest_bytes"] == sum(map(len, sent))
        assert st["ports"]["b"]["to_guest_frames"] == 100
        assert st["ports"]["b"]["to_guest_bytes"] == sum(map(len, sent))
        assert st["ports"]["a"]["queues"][1]["frames"] == 100
        assert st["ports"]["b"]["queues"][0]["frames"] == 100
        assert st["ports"]["a"]["queues"][1]["kicks"] >= 1
        assert st["ports"]["b"]["queues"][0]["calls"] >= 1
        assert st["ports"]["b"]["drops"] == {}
        assert {"mac": MAC_A, "port": "a"} in st["switch"]["fdb"]


def test_flooding_and_learning(sockdir):
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b, frontend(server, "c") as c:
        for fe in (a, b, c):
            fe.handshake()
            fe.post_rx()
        # unknown unicast floods to b and c, never back to a
        f1 = frame(MAC_B, MAC_A, 1)
        a.send_frame(f1)
        assert receive_n(b, 1) == [f1]
        assert receive_n(c, 1) == [f1]
        assert a.receive() == []
        # b answers: a is learned, so this goes to a only
        f2 = frame(MAC_A, MAC_B, 2)
        b.send_frame(f2)
        assert receive_n(a, 1) == [f2]
        time.sleep(0.05)
        assert c.receive() == []
        # now b is learned too: a -> b is no longer flooded
        f3 = frame(MAC_B, MAC_A, 3)
        a.send_frame(f3)
        assert receive_n(b, 1) == [f3]
        time.sleep(0.05)
        assert c.receive() == []
        # broadcast floods
        f4 = frame(BCAST, MAC_C, 4)
        c.send_frame(f4)
        assert receive_n(a, 1) == [f4]
        assert receive_n(b, 1) == [f4]
        fdb = {e["mac"]: e["port"] for e in server.stats()["switch"]["fdb"]}
        assert fdb == {MAC_A: "a", MAC_B: "b", MAC_C: "c"}


def test_mrg_rxbuf_spreads_a_frame_over_small_buffers(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx(count=16, size=256)
        big = frame(BCAST, MAC_A, 9, size=1500)
        a.send_frame(big)
        got = receive_n(b, 1)
        assert got == [big]
        # 12 + 1500 bytes over 256-byte buffers = 6 buffers, so 10 are left
        assert server.ports["b"].handler.device.rings[0].pending() == 10


def test_without_mrg_rxbuf_a_too_small_buffer_is_a_counted_drop(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=~bit(VIRTIO_NET_F_MRG_RXBUF))
        b.post_rx(count=4, size=256)
        a.send_frame(frame(BCAST, MAC_A, 1, size=1000))
        assert wait_for(lambda: server.stats()["ports"]["b"]["drops"].get("rx_buffer_too_small") == 1)
        small = frame(BCAST, MAC_A, 2, size=200)
        a.send_frame(small)
        assert receive_n(b, 1) == [small]


def test_drops_no_buffers_and_not_connected(sockdir):
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b:
        a.handshake()
        b.handshake()  # b posts no rx buffers; c never connects
        for i in range(5):
            a.send_frame(frame(BCAST, MAC_A, i))
        assert wait_for(lambda: server.stats()["ports"]["b"]["drops"].get("rx_no_buffers") == 5)
        st = server.stats()["ports"]
        assert st["c"]["drops"] == {"not_connected": 5}
        assert st["c"]["connected"] is False
        assert st["a"]["from_guest_frames"] == 5
        assert st["b"]["to_guest_frames"] == 0


def test_rings_start_disabled_until_enable(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(enable=False)
        b.post_rx()
        a.send_frame(frame(BCAST, MAC_A, 1))
        assert wait_for(lambda: server.stats()["ports"]["b"]["drops"].get("rx_queue_not_ready") == 1)
        b.call(Request.SET_VRING_ENABLE, bytes.fromhex("0000000001000000"))
        f = frame(BCAST, MAC_A, 2)
        a.send_frame(f)
        assert receive_n(b, 1) == [f]


def test_get_vring_base_stops_the_ring(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        a.send_frame(frame(BCAST, MAC_A, 1))
        assert len(receive_n(b, 1)) == 1
        assert a.get_vring_base(1) == 1  # one frame consumed from the tx ring
        a.send_frame(frame(BCAST, MAC_A, 2))
        time.sleep(0.2)
        assert b.receive() == []
        assert server.stats()["ports"]["a"]["from_guest_frames"] == 1


def test_event_idx_avail_event_and_call_suppression(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        assert b.features & bit(VIRTIO_RING_F_EVENT_IDX)
        rx = b.rx_ring()
        b.post_rx()
        b.set_used_event(rx, 2)  # "call me when used idx passes 2"
        for i in range(2):
            a.send_frame(frame(BCAST, MAC_A, i))
        assert len(receive_n(b, 2)) == 2
        first_calls = server.stats()["ports"]["b"]["queues"][0]["calls"]
        assert first_calls >= 1  # the first call is always made
        # the back-end asks the tx side to kick when past what it consumed
        assert wait_for(lambda: a.avail_event(a.tx_ring()) == 2)
        a.send_frame(frame(BCAST, MAC_A, 2))  # used idx 2 -> 3 passes used_event 2: a call
        assert len(receive_n(b, 1)) == 1
        assert wait_for(lambda: server.stats()["ports"]["b"]["queues"][0]["calls"] == first_calls + 1)
        b.set_used_event(rx, 1000)  # far away: no calls
        for i in range(3):
            a.send_frame(frame(BCAST, MAC_A, 10 + i))
        assert len(receive_n(b, 3)) == 3
        time.sleep(0.05)
        assert server.stats()["ports"]["b"]["queues"][0]["calls"] == first_calls + 1


def test_no_interrupt_flag_suppresses_calls_without_event_idx(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=~bit(VIRTIO_RING_F_EVENT_IDX))
        rx = b.rx_ring()
        b.post_rx()
        a.send_frame(frame(BCAST, MAC_A, 1))
        assert len(receive_n(b, 1)) == 1
        assert b.wait_call(rx, 1.0)
        b.mem[rx.avail:rx.avail + 2] = (1).to_bytes(2, "little")  # VRING_AVAIL_F_NO_INTERRUPT
        calls = server.stats()["ports"]["b"]["queues"][0]["calls"]
        a.send_frame(frame(BCAST, MAC_A, 2))
        assert len(receive_n(b, 1)) == 1
        assert server.stats()["ports"]["b"]["queues"][0]["calls"] == calls


def test_indirect_descriptor_tx(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        f = frame(BCAST, MAC_A, 7, size=300)
        tx = a.tx_ring()
        data = bytes(12) + f
        # two data buffers and an indirect table, all in the tx buffer area
        buf0, buf1, table = tx.bufs, tx.bufs + BUF_SIZE, tx.bufs + 2 * BUF_SIZE
        a.mem[buf0:buf0 + 100] = data[:100]
        a.mem[buf1:buf1 + len(data) - 100] = data[100:]
        import struct

        struct.pack_into("<QIHH", a.mem, table, a.gpa(buf0), 100, VRING_DESC_F_NEXT, 1)
        struct.pack_into("<QIHH", a.mem, table + 16, a.gpa(buf1), len(data) - 100, 0, 0)
        a.write_desc(tx, 0, a.gpa(table), 32, VRING_DESC_F_INDIRECT)
        a.publish(tx, 0)
        assert receive_n(b, 1) == [f]


def test_reconnect_after_front_end_goes_away(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "b") as b:
        b.handshake()
        b.post_rx()
        for round_ in range(3):
            a = Frontend(server.ports["a"].path)
            try:
                a.handshake()
                f = frame(MAC_B, MAC_A, round_)
                a.send_frame(f)
                assert receive_n(b, 1) == [f]
            finally:
                a.close()
            assert wait_for(lambda: server.stats()["ports"]["a"]["connected"] is False)
            assert server.ports["a"].handler is None  # memory unmapped and fds closed with it
        assert server.stats()["ports"]["a"]["from_guest_frames"] == 3


def test_second_connection_is_refused_while_one_is_active(sockdir, caplog):
    caplog.set_level(logging.WARNING)
    with running_server(sockdir, ["a"]) as server, frontend(server, "a") as a, frontend(server, "a") as a2:
        a.handshake()
        a2.connect()
        assert a2.closed_by_peer()
        assert "second front-end" in caplog.text
        assert server.stats()["ports"]["a"]["connected"] is True

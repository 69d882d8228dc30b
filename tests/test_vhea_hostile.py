"""An untrusted guest / front-end: each attack stops one ring or closes one connection, with a logged
reason, and the other ports keep forwarding."""

from __future__ import annotations

import logging
import os
import struct

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
from vhea.protocol import FLAG_VERSION, HEADER, U64, MemoryTable, Request, VringState
from vhea.vring import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT

# every test here runs on both datapaths (the Python reference and _datapath.c)
pytestmark = pytest.mark.usefixtures("datapath")


def check_a_to_b_still_works(a: Frontend, b: Frontend, tag: int) -> None:
    f = frame(MAC_B, MAC_A, tag)
    a.send_frame(f)
    assert receive_n(b, 1) == [f]


# ---- ring attacks from guest c's tx ring (or rx ring) ------------------------------------------------------

def addr_out_of_range(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa_base + c.mem_size + 4096, 64, 0)
    c.publish(tx, 0)


def length_past_region(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa(c.mem_size - 100), 200, 0)
    c.publish(tx, 0)


def address_wraps(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, 2**64 - 16, 64, 0)
    c.publish(tx, 0)


def chain_loop(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa(tx.bufs), 64, VRING_DESC_F_NEXT, 1)
    c.write_desc(tx, 1, c.gpa(tx.bufs), 64, VRING_DESC_F_NEXT, 0)
    c.publish(tx, 0)


def chain_longer_than_ring(c: Frontend) -> None:
    tx = c.tx_ring()
    for i in range(tx.num):  # every descriptor chained, the last one back to the first
        c.write_desc(tx, i, c.gpa(tx.bufs), 16, VRING_DESC_F_NEXT, (i + 1) % tx.num)
    c.publish(tx, 0)


def next_index_out_of_range(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa(tx.bufs), 64, VRING_DESC_F_NEXT, tx.num + 5)
    c.publish(tx, 0)


def head_out_of_range(c: Frontend) -> None:
    c.publish(c.tx_ring(), 0xFFFF)


def bogus_avail_idx(c: Frontend) -> None:
    tx = c.tx_ring()
    c.set_avail_idx(tx, 1000)
    c.kick(tx)


def indirect_loop(c: Frontend) -> None:
    tx = c.tx_ring()
    table = tx.bufs + BUF_SIZE
    struct.pack_into("<QIHH", c.mem, table, c.gpa(tx.bufs), 64, VRING_DESC_F_NEXT, 1)
    struct.pack_into("<QIHH", c.mem, table + 16, c.gpa(tx.bufs), 64, VRING_DESC_F_NEXT, 0)
    c.write_desc(tx, 0, c.gpa(table), 32, VRING_DESC_F_INDIRECT)
    c.publish(tx, 0)


def nested_indirect(c: Frontend) -> None:
    tx = c.tx_ring()
    table = tx.bufs + BUF_SIZE
    struct.pack_into("<QIHH", c.mem, table, c.gpa(table), 16, VRING_DESC_F_INDIRECT, 0)
    c.write_desc(tx, 0, c.gpa(table), 16, VRING_DESC_F_INDIRECT)
    c.publish(tx, 0)


def indirect_table_out_of_range(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa(c.mem_size - 16), 64, VRING_DESC_F_INDIRECT)
    c.publish(tx, 0)


def indirect_bad_length(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa(tx.bufs), 24, VRING_DESC_F_INDIRECT)
    c.publish(tx, 0)


def writable_tx_buffer(c: Frontend) -> None:
    tx = c.tx_ring()
    c.write_desc(tx, 0, c.gpa(tx.bufs), 64, 2)
    c.publish(tx, 0)


TX_ATTACKS = [
    (addr_out_of_range, "outside the mapped memory"),
    (length_past_region, "outside the mapped memory"),
    (address_wraps, "outside the mapped memory"),
    (chain_loop, "loop"),
    (chain_longer_than_ring, "longer than its table"),
    (next_index_out_of_range, "out of range"),
    (head_out_of_range, "names descriptor 65535"),
    (bogus_avail_idx, "avail idx moved 1000"),
    (indirect_loop, "longer than its table"),
    (nested_indirect, "nested indirect"),
    (indirect_table_out_of_range, "indirect table"),
    (indirect_bad_length, "indirect table length 24"),
    (writable_tx_buffer, "device-writable"),
]


@pytest.mark.parametrize("attack, reason", TX_ATTACKS, ids=[a.__name__ for a, _ in TX_ATTACKS])
def test_bad_tx_ring_stops_that_queue_only(sockdir, caplog, attack, reason):
    caplog.set_level(logging.WARNING)
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b, frontend(server, "c") as c:
        for fe in (a, b, c):
            fe.handshake()
            fe.post_rx()
        check_a_to_b_still_works(a, b, 1)
        attack(c)
        ring = lambda: server.ports["c"].handler.device.rings[1]  # noqa: E731
        assert wait_for(lambda: ring().error is not None)
        assert reason in ring().error
        assert "port c: queue 1 stopped: " in caplog.text and reason in caplog.text
        assert os.eventfd_read(c.tx_ring().err) == 1  # the front-end is told through SET_VRING_ERR's eventfd
        # the stopped ring is not serviced any more; the connection and the other rings stay
        assert server.ports["c"].conn is not None
        assert server.stats()["ports"]["c"]["from_guest_frames"] == 0
        check_a_to_b_still_works(a, b, 2)
        # c's rx ring still receives (the two a -> b frames were flooded to it: b's MAC is unknown)
        assert [x[14:18] for x in receive_n(c, 2)] == [bytes([0, 0, 0, 1]), bytes([0, 0, 0, 2])]
        f = frame(BCAST, MAC_A, 3)
        a.send_frame(f)
        assert receive_n(c, 1) == [f]


def test_read_only_rx_buffer_stops_the_rx_queue(sockdir, caplog):
    caplog.set_level(logging.WARNING)
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b, frontend(server, "c") as c:
        for fe in (a, b, c):
            fe.handshake()
        b.post_rx()
        rx = c.rx_ring()
        c.write_desc(rx, 0, c.gpa(rx.bufs), 2048, 0)  # device must write, but the buffer is read-only
        c.publish(rx, 0)
        a.send_frame(frame(BCAST, MAC_A, 1))
        assert wait_for(lambda: server.ports["c"].handler.device.rings[0].error is not None)
        assert "read-only" in caplog.text
        assert server.stats()["ports"]["c"]["drops"] == {"rx_ring_error": 1}
        assert bytes(c.mem[rx.bufs:rx.bufs + 64]) == bytes(64)  # nothing was written
        assert len(receive_n(b, 1)) == 1
        check_a_to_b_still_works(a, b, 2)


# ---- protocol attacks: the connection closes, the port accepts a new one --------------------------------

def wrong_payload_size(c: Frontend) -> None:
    c.send(Request.SET_FEATURES, bytes(4))


def mem_table_without_fds(c: Frontend) -> None:
    c.send(Request.SET_MEM_TABLE, c.memory_table().pack())


def unknown_request(c: Frontend) -> None:
    c.send(99)


def bad_version(c: Frontend) -> None:
    c.sock.sendall(HEADER.pack(Request.GET_FEATURES, 0x2, 0))


def oversize_payload(c: Frontend) -> None:
    c.sock.sendall(HEADER.pack(Request.SET_FEATURES, FLAG_VERSION, 1 << 20))


def ring_index_out_of_range(c: Frontend) -> None:
    c.send(Request.SET_VRING_NUM, VringState(7, 256).pack())


def ring_size_not_power_of_two(c: Frontend) -> None:
    c.send(Request.SET_VRING_NUM, VringState(0, 100).pack())


def kick_without_fd(c: Frontend) -> None:
    c.send(Request.SET_VRING_KICK, U64.pack(0))


def ring_addr_outside_memory(c: Frontend) -> None:
    c.call(Request.SET_VRING_NUM, VringState(0, 256).pack())
    c.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0x1000, 0x2000, 0x3000, 0))


def ring_addr_misaligned(c: Frontend) -> None:
    r = c.rx_ring()
    c.call(Request.SET_VRING_NUM, VringState(0, 256).pack())
    c.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, c.uva(r.desc), c.uva(r.used) + 2,
                                               c.uva(r.avail), 0))


def mem_table_region_bigger_than_fd(c: Frontend) -> None:
    t = c.memory_table()
    r = t.regions[0]
    big = MemoryTable((type(r)(r.guest_phys_addr, r.memory_size * 4, r.userspace_addr, 0),))
    c.send(Request.SET_MEM_TABLE, big.pack(), [c.memfd])


def unoffered_features(c: Frontend) -> None:
    c.send(Request.SET_FEATURES, U64.pack(1 << 63))


PROTO_ATTACKS = [
    (wrong_payload_size, "expected 8"),
    (mem_table_without_fds, "1 regions but 0 fds"),
    (unknown_request, "unknown or unsupported request 99"),
    (bad_version, "bad version"),
    (oversize_payload, "limit"),
    (ring_index_out_of_range, "ring index 7 out of range"),
    (ring_size_not_power_of_two, "not a power of two"),
    (kick_without_fd, "expected 1 fd, got 0"),
    (ring_addr_outside_memory, "outside the mapped memory"),
    (ring_addr_misaligned, "not aligned"),
    (mem_table_region_bigger_than_fd, "its fd has"),
    (unoffered_features, "did not offer"),
]


@pytest.mark.parametrize("attack, reason", PROTO_ATTACKS, ids=[a.__name__ for a, _ in PROTO_ATTACKS])
def test_protocol_violation_closes_that_connection_only(sockdir, caplog, attack, reason):
    caplog.set_level(logging.WARNING)
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        c = Frontend(server.ports["c"].path)
        try:
            c.handshake()
            attack(c)
            assert c.closed_by_peer(), "the back-end kept a misbehaving connection"
            assert wait_for(lambda: not server.stats()["ports"]["c"]["connected"])
            assert "port c: protocol error" in caplog.text and reason in caplog.text
        finally:
            c.close()
        check_a_to_b_still_works(a, b, 1)
        # a well-behaved front-end can connect to c again
        with frontend(server, "c") as c2:
            c2.handshake()
            c2.post_rx()
            f = frame(BCAST, MAC_C, 2)
            a.send_frame(f)
            assert receive_n(c2, 1) == [f]


def test_fds_on_a_request_that_takes_none_are_closed(sockdir, caplog):
    caplog.set_level(logging.WARNING)
    with running_server(sockdir, ["a"]) as server, frontend(server, "a") as a:
        a.handshake()
        before = set(os.listdir("/proc/self/fd"))
        r, w = os.pipe()
        a.call(Request.SET_OWNER, b"", [r, w])  # SET_OWNER carries no fds
        os.close(r)
        os.close(w)
        assert "carried 2 fd(s); closed them" in caplog.text
        assert wait_for(lambda: set(os.listdir("/proc/self/fd")) <= before)
        assert server.stats()["ports"]["a"]["connected"]


def test_disconnect_releases_memory_and_fds(sockdir):
    with running_server(sockdir, ["a"]) as server:
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(3):
            fe = Frontend(server.ports["a"].path)
            fe.handshake()
            assert wait_for(lambda: server.ports["a"].handler is not None and
                            server.ports["a"].handler.device.mem is not None)
            fe.close()
            assert wait_for(lambda: server.ports["a"].conn is None)
        assert wait_for(lambda: set(os.listdir("/proc/self/fd")) <= before)
        maps = open("/proc/self/maps").read()
        assert "vhea-frontend-guest" not in maps

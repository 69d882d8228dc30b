"""Call, err and kick eventfds a hostile front-end tampered with never block vhea's loop (issue 12, vhea 3).

The peer shares the eventfd's file description, so it can clear O_NONBLOCK and fill the counter: vhea polls
before each write and read, and takes only eventfds (a pipe handed over as one would fill and block).
"""

from __future__ import annotations

import os
import time

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

from vhea.protocol import U64, VIRTIO_RING_F_EVENT_IDX, Request

FULL = 0xFFFFFFFFFFFFFFFE  # the largest value an eventfd holds: one more write blocks (or EAGAIN)


def test_a_blocking_call_eventfd_filled_to_the_top_does_not_hang_vhea(sockdir):
    with vhea_serve(sockdir, ["a", "b", "c"]) as proc:
        a, b, c = (serve_frontend(sockdir, p) for p in "abc")
        try:
            for fe in (a, b):
                fe.handshake()
                fe.post_rx()
            c.handshake(want_features=~(1 << VIRTIO_RING_F_EVENT_IDX))  # c wants a call for every batch
            c.post_rx()
            timed_exchange(a, b, 1)
            call = os.eventfd(0)  # blocking, and shared with vhea: vhea's write would block forever
            os.eventfd_write(call, FULL)
            c.call(Request.SET_VRING_CALL, U64.pack(0), [call])  # c's rx ring
            for i in range(5):  # broadcasts reach c's rx ring: vhea calls it
                a.send_frame(frame(BCAST, MAC_A, 100 + i))
                time.sleep(0.05)
            assert len(receive_n(b, 5)) == 5
            b.post_rx()
            for tag in range(2, 12):
                assert timed_exchange(a, b, tag) < 2.0
            st = serve_stats(sockdir)
            assert st["ports"]["c"]["queues"][0]["calls_skipped"] >= 1, str(st["ports"]["c"]["queues"][0])
            assert st["ports"]["c"]["connected"]
            os.close(call)
        finally:
            for fe in (a, b, c):
                fe.close()
        assert proc.poll() is None


def test_a_pipe_handed_over_as_call_or_kick_eventfd_is_refused(sockdir):
    with vhea_serve(sockdir, ["a", "b", "c"]):
        a, b = serve_frontend(sockdir, "a"), serve_frontend(sockdir, "b")
        try:
            for fe in (a, b):
                fe.handshake()
                fe.post_rx()
            for request in (Request.SET_VRING_CALL, Request.SET_VRING_KICK, Request.SET_VRING_ERR):
                c = serve_frontend(sockdir, "c")
                try:
                    c.handshake()
                    r, w = os.pipe()
                    c.send(request, U64.pack(0), [w])
                    os.close(w)
                    assert c.closed_by_peer(timeout=5), f"{request.name} with a pipe was accepted"
                    os.close(r)
                finally:
                    c.close()
            assert wait_for(lambda: serve_stats(sockdir)["ports"]["c"]["closed"] == {"protocol error": 3})
            timed_exchange(a, b, 1)
        finally:
            a.close()
            b.close()

"""isostackd's data path (datapath.py): the draining grace of a tx ring and its end before a sleep."""

from isostack.frontend import Stack
from isostack.layout import C_DRAINING, Geometry


def test_dispatcher_ends_the_draining_grace_before_it_sleeps(dispatcher_thread, listener):
    """An empty tx ring stays 'draining' for a grace period after a send (the front-end then posts no SEND);
    before a real sleep the dispatcher ends that grace, so the next send posts SEND and is not left waiting
    for a poll (the dispatcher is driven by hand here: no timing involved)."""
    running = dispatcher_thread()
    path, d = running.path, running.dispatcher
    with Stack(path, Geometry(max_sockets=4, tx_size=4096, rx_size=4096, notif_rings=1)) as st:
        s = st.create_connection(listener.getsockname(), timeout=5)
        peer, _ = listener.accept()
        running.stop()
        q, cw = s._words, s._control_word
        commands = d.stats["commands"]
        s.sendall(b"a" * 64)
        for _ in range(3):
            d.poll_once()
        assert peer.recv(100) == b"a" * 64
        assert q[cw + C_DRAINING] == 1  # in its grace: more sends would be drained without a command
        s.sendall(b"b" * 64)
        d.poll_once()
        assert peer.recv(100) == b"b" * 64
        assert d.stats["commands"] == commands + 1  # the second send needed no SEND
        d.sleep_until_woken()
        assert q[cw + C_DRAINING] == 0 and s._slot not in {x.index for x in d.shared.tx_active}
        s.sendall(b"c" * 64)  # posts SEND (and kicks: the dispatcher had announced its sleep)
        d.poll_once()
        assert d.stats["commands"] == commands + 2
        assert peer.recv(100) == b"c" * 64
        peer.close()
        running.start()
        s.close()


def test_a_full_rx_ring_is_refilled_once_a_quarter_is_free(hand_driven):
    """A slow reader's full rx ring is not received into per message it takes: the dispatcher waits until a
    quarter of the ring is free (one large receive then), and a reader that emptied it counts as waiting."""
    from isostack.dispatcher.datapath import RX_REFILL
    from isostack.layout import C_RX_HEAD, C_RX_TAIL

    d, s, peer = hand_driven.dispatcher, hand_driven.sock, hand_driven.peer
    size = s._rx_size
    words, control = s._words, s._control_word
    slot = next(x for x in d.shared.apps.values()).sockets[s._slot]
    peer.sendall(b"r" * (3 * size))
    for _ in range(5):
        d.poll_once()
    assert slot.rx_stalled and words[control + C_RX_TAIL] - words[control + C_RX_HEAD] == size
    tail = words[control + C_RX_TAIL]
    assert len(s.recv(64)) == 64
    d.poll_once()
    d.poll_once()
    assert slot.rx_stalled and words[control + C_RX_TAIL] == tail  # 64 bytes free: not yet
    got = 64
    while got < size // RX_REFILL:
        got += len(s.recv(size // RX_REFILL - got))
    d.poll_once()  # credits seen: not a waiting reader (the ring still holds most), so no latency flag
    assert not slot.rx_stalled and not d.shared.loop_latency and d.shared.loop_fill == 1 / RX_REFILL
    d.poll_once()  # the receive that refills the quarter
    assert words[control + C_RX_TAIL] == tail + size // RX_REFILL
    for _ in range(3):
        d.poll_once()  # stalled again
    while got < size + size // RX_REFILL:  # everything received so far: the ring is empty
        got += len(s.recv(size))
    d.poll_once()
    assert not slot.rx_stalled and d.shared.loop_latency  # an emptied ring: its reader waits
    for _ in range(3):
        d.poll_once()
    assert words[control + C_RX_TAIL] - words[control + C_RX_HEAD] == size  # refilled whole


def test_a_tx_ring_waiting_for_the_kernel_is_known_until_epollout(hand_driven):
    """A drain the kernel took only part of waits for EPOLLOUT (tx_blocked, not polled); the dispatcher may nap
    meanwhile, as the event wakes it."""
    d, s, peer = hand_driven.dispatcher, hand_driven.sock, hand_driven.peer
    slot = next(x for x in d.shared.apps.values()).sockets[s._slot]
    s.setblocking(False)
    sent = 0
    for _ in range(2000):  # the peer reads nothing: the kernel's buffers fill up
        try:
            sent += s.send(b"t" * 4096)
        except BlockingIOError:
            pass
        d.poll_once()
        if slot in d.shared.tx_blocked:
            break
    assert slot in d.shared.tx_blocked and slot not in d.shared.tx_active
    got = 0
    peer.setblocking(False)
    for _ in range(100_000):  # bounded: a lost EPOLLOUT fails the test instead of hanging it
        d.poll_once()
        try:
            got += len(peer.recv(1 << 20))
        except BlockingIOError:
            if got >= sent:
                break
    assert got == sent and slot not in d.shared.tx_blocked

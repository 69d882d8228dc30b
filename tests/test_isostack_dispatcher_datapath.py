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

"""The dispatcher's side of the front-end's readiness and send paths, with the dispatcher in this process: it
writes a socket's readiness fd only when armed, and ends the draining grace of an empty tx ring before it sleeps.
(The front-end's own readiness tests: test_isostack_frontend_readiness.py.)"""

import pytest
from test_isostack_frontend import listener  # noqa: F401  (fixture)
from test_isostack_frontend_readiness import readable

from isostack.frontend import Stack
from isostack.layout import C_WATCH_ARMED, Geometry


def test_readiness_writes_only_when_armed(tmp_path, listener):  # noqa: F811
    """Interrupt mitigation of the readiness eventfd: the dispatcher writes it once, then not again until a
    would-block call re-armed it; the events in between are counted as saved and no wake-up is lost."""
    import threading

    from isostack.dispatcher import Dispatcher

    path = str(tmp_path / "d.sock")
    d = Dispatcher(path, None, busy_poll_us=200, sleep_ms=20)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        with Stack(path, Geometry(max_sockets=4, tx_size=4096, rx_size=4096, notif_rings=1)) as st:
            s = st.create_connection(listener.getsockname(), timeout=5)
            peer, _ = listener.accept()
            s.fileno()  # armed, nothing to report yet
            for i in range(20):
                peer.sendall(b"m%02d" % i)
                assert s.recv(10) == b"m%02d" % i  # blocking recv: does not re-arm
            assert d.stats["watch_writes"] == 1  # the first event only
            assert d.stats["watch_saved"] >= 19
            assert readable(s, 0)  # and the fd still says "look at me"
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(10)  # re-arms and clears
            assert not readable(s, 0.2)
            armed = s._control_word + C_WATCH_ARMED
            s._words[armed] = (1 << 64) - 1  # application memory: any value; non-zero is armed
            peer.sendall(b"again")
            assert readable(s, 5)
            assert d.stats["watch_writes"] == 2
            assert s._words[armed] == 0  # disarmed by the write
            assert s.recv(10) == b"again"
            peer.close()
            s.close()
    finally:
        d.running = False
        t.join(5)
        d.close()


def test_dispatcher_ends_the_draining_grace_before_it_sleeps(tmp_path, listener):  # noqa: F811
    """An empty tx ring stays 'draining' for a grace period after a send (the front-end then posts no SEND);
    before a real sleep the dispatcher ends that grace, so the next send posts SEND and is not left waiting
    for a poll (the dispatcher is driven by hand here: no timing involved)."""
    import threading

    from isostack.dispatcher import Dispatcher
    from isostack.layout import C_DRAINING

    path = str(tmp_path / "d.sock")
    d = Dispatcher(path, None, busy_poll_us=200, sleep_ms=20)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        with Stack(path, Geometry(max_sockets=4, tx_size=4096, rx_size=4096, notif_rings=1)) as st:
            s = st.create_connection(listener.getsockname(), timeout=5)
            peer, _ = listener.accept()
            d.running = False
            t.join(5)
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
            d._sleep()
            assert q[cw + C_DRAINING] == 0 and s._slot not in {x.idx for x in d.tx_active}
            s.sendall(b"c" * 64)  # posts SEND (and kicks: the dispatcher had announced its sleep)
            d.poll_once()
            assert d.stats["commands"] == commands + 2
            assert peer.recv(100) == b"c" * 64
            peer.close()
            d.running = True
            t = threading.Thread(target=d.run, daemon=True)
            t.start()
            s.close()
    finally:
        d.running = False
        t.join(5)
        d.close()

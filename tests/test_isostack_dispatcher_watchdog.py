"""The stranded-ring watchdog (watchdog.py): a tx ring whose SEND was lost (or comes late) is found and drained
by the idle dispatcher.  The dispatcher runs in this process and is driven by hand (no timing involved)."""


from isostack_helpers import recv_exactly, sent_and_released

from isostack.dispatcher import watchdog
from isostack.layout import C_DRAINING, C_TX_HEAD, C_TX_TAIL


def test_stranded_tx_ring_is_adopted_when_idle(hand_driven, fast, monkeypatch):
    """A front-end that won the draining flag but whose SEND never arrived (here a _post that loses it) left data in
    the ring that nobody drained: the sender then waits for credits forever (the hang of a 16-connection
    64-byte STREAM).  The idle dispatcher finds the ring and drains it (tx_stranded), without timing here."""
    monkeypatch.setattr(watchdog, "STRANDED_S", 0.0)
    monkeypatch.setattr(watchdog, "STRANDED_CHECK_S", 0.0)
    d, st, s, peer = hand_driven
    q, cw = s._words, s._control_word
    sent_and_released(d, s, peer)

    monkeypatch.setattr(s, "_post", lambda *a, **k: 0)  # the SEND is lost on its way (the Python path: the C
    s._send_slow(b"b" * 64)  # path posts without any Python that could lose it)
    monkeypatch.undo()
    monkeypatch.setattr(watchdog, "STRANDED_S", 0.0)
    monkeypatch.setattr(watchdog, "STRANDED_CHECK_S", 0.0)
    assert q[cw + C_DRAINING] == 1 and q[cw + C_TX_TAIL] == q[cw + C_TX_HEAD] + 64  # stranded
    peer.settimeout(0.5)
    for _ in range(4):
        d.sleep_until_woken()
    assert recv_exactly(peer, 64) == b"b" * 64
    assert d.stats["tx_stranded"] == 1
    s.sendall(b"c" * 64)  # and the path works on
    for _ in range(3):
        d.poll_once()
    assert recv_exactly(peer, 64) == b"c" * 64
    assert d.stats["tx_stranded_late_send"] == 0  # that SEND never came: really lost


def test_an_adopted_ring_whose_send_comes_late_is_counted_as_late(hand_driven, fast, monkeypatch):
    """The front-end won the flag but its SEND comes only after the ring was adopted (a slow thread, not a lost
    SEND): the data goes out once, the late SEND is harmless and tx_stranded_late_send says it was late."""
    d, st, s, peer = hand_driven
    sent_and_released(d, s, peer)
    held = []
    real_post = s._post
    monkeypatch.setattr(s, "_post", lambda *a, **k: held.append(a) or 0)  # the SEND is held back
    s._send_slow(b"b" * 64)
    monkeypatch.undo()
    monkeypatch.setattr(watchdog, "STRANDED_S", 0.0)
    monkeypatch.setattr(watchdog, "STRANDED_CHECK_S", 0.0)
    for _ in range(4):
        d.sleep_until_woken()
    peer.settimeout(0.5)
    assert recv_exactly(peer, 64) == b"b" * 64
    assert d.stats["tx_stranded"] == 1 and d.stats["tx_stranded_late_send"] == 0
    real_post(*held[0])  # now the late SEND arrives
    for _ in range(3):
        d.poll_once()
    assert d.stats["tx_stranded_late_send"] == 1 and d.stats["bad_entries"] == 0
    s.sendall(b"c" * 64)
    for _ in range(3):
        d.poll_once()
    assert recv_exactly(peer, 64) == b"c" * 64  # nothing sent twice, nothing lost


def test_stranded_check_leaves_a_pending_send_alone(hand_driven, fast, monkeypatch):
    """The flag set with the SEND queued is the normal state between a post and the dispatcher's next loop."""
    monkeypatch.setattr(watchdog, "STRANDED_S", 0.0)
    d, st, s, peer = hand_driven
    s.sendall(b"a" * 64)  # flag clear: SEND posted, not yet read
    assert s._words[s._control_word + C_DRAINING] == 1
    d.watchdog.check(0.0)
    d.watchdog.check(1.0)
    assert d.stats["tx_stranded"] == 0
    d.poll_once()
    peer.settimeout(0.5)
    assert recv_exactly(peer, 64) == b"a" * 64

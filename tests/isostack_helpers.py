"""Helpers shared by the IsoStack tests that drive a dispatcher by hand (conftest's hand_driven fixture)."""

from isostack.layout import C_DRAINING


def recv_exactly(peer, n: int) -> bytes:
    """n bytes from a kernel socket (a short read is a failure: the peer closed)."""
    got = bytearray()
    while len(got) < n:
        b = peer.recv(n - len(got))
        assert b
        got += b
    return bytes(got)


def sent_and_released(d, s, peer) -> None:
    """64 bytes sent and drained, then the dispatcher releases the ring's draining flag (the grace of the empty
    ring ends before it sleeps): the next send must post SEND."""
    s.sendall(b"a" * 64)
    d.poll_once()
    assert recv_exactly(peer, 64) == b"a" * 64
    d.sleep_until_woken()
    assert s._words[s._control_word + C_DRAINING] == 0

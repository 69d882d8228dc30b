"""The learning switch on its own: learning, ageing, flooding, no hairpin."""

from __future__ import annotations

from vhea.switch import Switch


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def eth(dst: str, src: str) -> bytes:
    return mac(dst) + mac(src) + b"\x88\xb5" + bytes(46)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_unknown_unicast_floods_then_learned_goes_direct():
    sw = Switch(["a", "b", "c"], clock=Clock())
    assert sw.destinations(eth("02:00:00:00:00:0b", "02:00:00:00:00:0a"), "a") == ["b", "c"]
    assert sw.destinations(eth("02:00:00:00:00:0a", "02:00:00:00:00:0b"), "b") == ["a"]
    assert sw.destinations(eth("02:00:00:00:00:0b", "02:00:00:00:00:0a"), "a") == ["b"]


def test_broadcast_and_multicast_flood_never_to_ingress():
    sw = Switch(["a", "b", "c"], clock=Clock())
    sw.destinations(eth("02:00:00:00:00:0b", "02:00:00:00:00:0b"), "b")
    assert sw.destinations(eth("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0a"), "a") == ["b", "c"]
    assert sw.destinations(eth("01:00:5e:00:00:01", "02:00:00:00:00:0c"), "c") == ["a", "b"]


def test_frame_to_a_mac_behind_the_ingress_port_is_not_sent_back():
    sw = Switch(["a", "b"], clock=Clock())
    sw.destinations(eth("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01"), "a")
    assert sw.destinations(eth("02:00:00:00:00:01", "02:00:00:00:00:02"), "a") == []


def test_ageing_and_moves_and_forget():
    clock = Clock()
    sw = Switch(["a", "b", "c"], ageing=10, clock=clock)
    sw.destinations(eth("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0a"), "a")
    clock.t += 5
    assert sw.destinations(eth("02:00:00:00:00:0a", "02:00:00:00:00:0b"), "b") == ["a"]
    clock.t += 11
    assert sw.destinations(eth("02:00:00:00:00:0a", "02:00:00:00:00:0b"), "b") == ["a", "c"]  # aged out
    sw.destinations(eth("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0a"), "c")  # the MAC moved to c
    assert sw.destinations(eth("02:00:00:00:00:0a", "02:00:00:00:00:0b"), "b") == ["c"]
    sw.forget_port("c")
    assert {e["mac"] for e in sw.table()} == {"02:00:00:00:00:0b"}


def test_multicast_source_is_not_learned():
    sw = Switch(["a", "b"], clock=Clock())
    sw.destinations(eth("ff:ff:ff:ff:ff:ff", "01:00:00:00:00:01"), "a")
    assert sw.table() == []

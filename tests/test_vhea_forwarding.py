"""The forwarding decisions (vhea/forwarding.py) as pure code: no server, no ring, no socket."""

from __future__ import annotations

from vhea.forwarding import Egress, Run, egress, mac_runs, refusal, ring_segments
from vhea.switch import Switch

A = bytes.fromhex("02000000000a")
B = bytes.fromhex("02000000000b")
C = bytes.fromhex("02000000000c")
BCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, tag: int = 0) -> bytes:
    return dst + src + b"\x88\xb5" + bytes([tag]) * 50


class Offload(bytes):
    """Stands for a TxFrame: any frame whose type is not exactly bytes goes by itself."""


def test_runs_group_plain_frames_with_the_same_addresses():
    frames = [eth(B, A, 1), eth(B, A, 2), eth(C, A, 3), eth(C, A, 4), eth(C, A, 5), eth(B, A, 6)]
    assert list(mac_runs(frames)) == [Run(0, 2, False), Run(2, 5, False), Run(5, 6, False)]


def test_offload_frames_go_alone_and_split_runs():
    frames = [eth(B, A, 1), Offload(eth(B, A, 2)), eth(B, A, 3), eth(B, A, 4), Offload(eth(B, A, 5))]
    assert list(mac_runs(frames)) == [Run(0, 1, False), Run(1, 2, True), Run(2, 4, False), Run(4, 5, True)]


def test_no_frames_no_runs():
    assert list(mac_runs([])) == []


def test_egress_floods_then_learns_and_never_hairpins():
    now = [0.0]
    sw = Switch(["a", "b", "c"], ageing=10.0, clock=lambda: now[0])
    assert egress(sw, "a", True, eth(B, A)) == Egress(["b", "c"], None)  # unknown: flooded; A learnt on a
    assert egress(sw, "b", True, eth(A, B)) == Egress(["a"], None)
    assert egress(sw, "a", True, eth(A, C)) == Egress([], "dst_is_ingress_port")  # A sits on a itself
    now[0] = 20.0  # A aged out
    assert egress(sw, "b", True, eth(A, B)) == Egress(["a", "c"], None)


def test_egress_of_a_port_whose_link_is_down_drops_and_teaches_nothing():
    sw = Switch(["a", "b"], clock=lambda: 0.0)
    assert egress(sw, "a", False, eth(BCAST, A)) == Egress([], "link_down")
    assert sw.fdb == {}


def test_refusal_reasons_in_order():
    assert refusal(False, False) == "link_down"
    assert refusal(False, True) == "link_down"
    assert refusal(True, False) == "not_connected"
    assert refusal(True, True) is None


def test_ring_segments_split_by_ring():
    rings = ["r0", "r0", "r2", "r2", "r2", "r0", None]
    segs = list(ring_segments(rings.__getitem__, 0, len(rings)))
    assert [tuple(s) for s in segs] == [("r0", 0, 2), ("r2", 2, 5), ("r0", 5, 6), (None, 6, 7)]


def test_ring_segments_of_a_sub_range_and_of_an_empty_one():
    rings = ["x", "y", "y", "x"]
    assert [tuple(s) for s in ring_segments(rings.__getitem__, 1, 3)] == [("y", 1, 3)]
    assert [tuple(s) for s in ring_segments(rings.__getitem__, 2, 2)] == [(None, 2, 2)]


def test_ring_segments_classify_lazily():
    """A caller that stops after a segment (its receiver paused) has classified one frame past it, no more."""
    asked: list[int] = []

    def ring_of(i: int) -> str:
        asked.append(i)
        return "r0" if i < 3 else "r1"

    segs = ring_segments(ring_of, 0, 8)
    assert tuple(next(segs)) == ("r0", 0, 3)
    assert asked == [0, 1, 2, 3]

"""The flow control decisions of vhea/pause.py as pure code (FlowControl with a given `now`, fake ports and
rings); test_vhea_pause.py runs the same rules through a server over real sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from vhea.pause import Drained, FlowControl, PauseTimeout, holds, no_buffers_reason


@dataclass(eq=False)
class FakePort:
    name: str
    pause: bool = True
    pause_max_us: int = 1000
    pause_events: int = 0
    pause_timeouts: int = 0
    stalled: set[int] = field(default_factory=set)
    tx_pauses: int = 0
    tx_paused_s: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1, queue: int | None = None) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


@dataclass(eq=False)
class FakeRing:
    index: int
    ready: bool = True
    buffers: int = 0  # what pending() reports: rx buffers the guest posted

    def pending(self, fence: bool = False) -> int:
        return self.buffers


class Receivers:
    """The server's side of a drain: ports by name, and push(port, frame) into a FakeRing per port."""

    def __init__(self, *ports: FakePort) -> None:
        self.ports = {p.name: p for p in ports}
        self.rings = {p.name: FakeRing(0) for p in ports}
        self.got: dict[str, list[bytes]] = {p.name: [] for p in ports}

    def push(self, port: FakePort, frame: bytes) -> FakeRing | None:
        ring = self.rings[port.name]
        if ring.buffers:
            ring.buffers -= 1
            self.got[port.name].append(frame)
            return None
        if holds(port, ring.index):
            return ring
        port.drop(no_buffers_reason(port, ring.index))
        return None


def paused(src: FakePort, tx: FakeRing, rx_port: FakePort, rx: FakeRing, frames: list[bytes],
           now: float = 10.0) -> tuple[FlowControl, object]:
    flow = FlowControl()
    bl = flow.begin(src, tx, rx_port, rx, now)
    for f in frames:
        bl.add(rx_port.name, f)
    return flow, bl


def test_holds_and_the_drop_reason():
    p = FakePort("b", pause=False)
    assert not holds(p, 0) and no_buffers_reason(p, 0) == "rx_no_buffers"
    p.pause = True
    assert holds(p, 0)
    p.stalled.add(0)
    assert not holds(p, 0) and holds(p, 1)
    assert no_buffers_reason(p, 0) == "rx_pause_timeout" and no_buffers_reason(p, 1) == "rx_no_buffers"


def test_begin_pauses_the_tx_queue_and_counts_both_sides():
    a, b = FakePort("a"), FakePort("b", pause_max_us=2500)
    tx = FakeRing(1)
    flow, bl = paused(a, tx, b, FakeRing(0), [b"x"], now=5.0)
    assert flow and flow.paused(a, tx) and not flow.paused(b, tx)
    assert bl.start == 5.0 and bl.deadline == 5.0 + 0.0025 and bl.blocked[0] is b
    assert (a.tx_pauses, b.pause_events) == (1, 1)
    assert flow.next_deadline() == bl.deadline
    assert flow.summary() == ({"b": 1}, {"a": [bl]})


def test_nothing_moves_while_the_receiver_has_no_buffers_before_the_limit():
    a, b = FakePort("a"), FakePort("b")
    rx = Receivers(a, b)
    flow, _bl = paused(a, FakeRing(1), b, rx.rings["b"], [b"1", b"2"])
    assert flow.drain(10.0005, rx.push, rx.ports.get) == Drained([], [])
    assert rx.got["b"] == [] and flow.summary()[0] == {"b": 2}


def test_frames_go_in_order_once_there_are_buffers_and_the_queue_resumes():
    a, b = FakePort("a"), FakePort("b")
    rx = Receivers(a, b)
    tx = FakeRing(1)
    flow, bl = paused(a, tx, b, rx.rings["b"], [b"1", b"2", b"3"])
    rx.rings["b"].buffers = 2
    assert flow.drain(10.0002, rx.push, rx.ports.get) == Drained([], [])  # two in, the third waits
    assert rx.got["b"] == [b"1", b"2"] and flow.paused(a, tx)
    rx.rings["b"].buffers = 1
    drained = flow.drain(10.0004, rx.push, rx.ports.get)
    assert drained.resumed == [bl] and drained.timeouts == []
    assert rx.got["b"] == [b"1", b"2", b"3"] and not flow
    assert abs(a.tx_paused_s - 0.0004) < 1e-9


def test_the_pause_limit_drops_what_is_left_and_stalls_the_queue():
    a, b = FakePort("a"), FakePort("b", pause_max_us=1000)
    rx = Receivers(a, b)
    flow, bl = paused(a, FakeRing(1), b, rx.rings["b"], [b"1", b"2", b"3"])
    drained = flow.drain(10.002, rx.push, rx.ports.get)
    assert drained.resumed == [bl]
    assert drained.timeouts == [PauseTimeout(b, 0, 2000, 1)]
    assert b.pause_timeouts == 1 and b.stalled == {0}
    assert b.drops == {"rx_pause_timeout": 3} and rx.got["b"] == []


def test_frames_for_a_removed_port_are_dropped_at_the_sender():
    a, b, c = FakePort("a"), FakePort("b"), FakePort("c")
    rx = Receivers(a, c)  # b is gone
    flow = FlowControl()
    bl = flow.begin(a, FakeRing(1), b, FakeRing(0, ready=False), 0.0)
    bl.add("b", b"1")
    bl.add("c", b"2")
    rx.rings["c"].buffers = 1
    assert flow.drain(0.0001, rx.push, rx.ports.get).resumed == [bl]
    assert a.drops == {"dst_removed": 1} and rx.got["c"] == [b"2"]


def test_a_receiver_that_turned_pause_off_gets_one_more_try():
    a, b = FakePort("a"), FakePort("b")
    rx = Receivers(a, b)
    flow, _bl = paused(a, FakeRing(1), b, rx.rings["b"], [b"1"])
    b.pause = False
    assert flow.drain(10.0001, rx.push, rx.ports.get).timeouts == []
    assert b.drops == {"rx_no_buffers": 1} and not flow

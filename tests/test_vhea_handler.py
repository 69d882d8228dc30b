"""The vhost-user request handler (transport): decoding, fd and order checks, the session state, and what it asks
of the device through the VhostUserBackend interface (a recording fake here, the real NetBackend in the fuzz test).

None of these walk a ring, so they run once, not per datapath.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhea.handler import BackendHandler
from vhea.net_backend import NetBackend
from vhea.protocol import (
    FLAG_NEED_REPLY,
    FLAG_VERSION,
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_NOFD_MASK,
    Header,
    MemoryRegion,
    MemoryTable,
    Message,
    ProtocolError,
    ProtocolFeature,
    Request,
    VringAddr,
    VringState,
    bit,
)
from vhea.vhost_backend import BackendError


class FakeDevice:
    """A VhostUserBackend that records what the handler asks of it."""

    def __init__(self, queue_num: int = 1, refuse: str | None = None) -> None:
        self.queue_num = queue_num
        self.vring_count = 2 * queue_num
        self.calls: list[tuple] = []
        self.refuse = refuse  # a method name that raises BackendError

    def offered_features(self) -> int:
        return bit(VHOST_USER_F_PROTOCOL_FEATURES) | 1

    def __getattr__(self, name: str):
        if not name.startswith(("set_", "get_", "reset")):
            raise AttributeError(name)

        def record(*args):
            if name == "set_mem_table":
                for fd in args[1]:  # consumed, as GuestMemory.map does
                    os.close(fd)
            if name == self.refuse:
                raise BackendError(f"{name} refused")
            self.calls.append((name, *args))
            return 7 if name == "get_vring_base" else None
        return record


def msg(request: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = FLAG_VERSION) -> Message:
    return Message(Header(request, flags, len(payload)), payload, fds or [])


def memory_table_message() -> Message:
    r, w = os.pipe()
    os.close(w)
    return msg(Request.SET_MEM_TABLE, MemoryTable((MemoryRegion(0, 4096, 0x1000, 0),)).pack(), [r])


def test_requests_reach_the_device_decoded_and_the_session_records_them():
    dev = FakeDevice()
    h = BackendHandler("p", dev)
    h.handle(msg(Request.SET_OWNER))
    h.handle(msg(Request.SET_FEATURES, U64.pack(1)))
    h.handle(memory_table_message())
    h.handle(msg(Request.SET_VRING_NUM, VringState(1, 256).pack()))
    addr = VringAddr(1, 0, 0x1000, 0x2000, 0x3000, 0)
    h.handle(msg(Request.SET_VRING_ADDR, addr.pack()))
    h.handle(msg(Request.SET_VRING_BASE, VringState(1, 5).pack()))
    h.handle(msg(Request.SET_VRING_KICK, U64.pack(1 | VRING_NOFD_MASK)))
    assert [c[0] for c in dev.calls] == ["set_features", "set_mem_table", "set_vring_num", "set_vring_addr",
                                        "set_vring_base", "set_vring_kick", "set_vring_enable"]
    assert dev.calls[2] == ("set_vring_num", 1, 256) and dev.calls[3] == ("set_vring_addr", addr)
    assert dev.calls[5:] == [("set_vring_kick", 1, None), ("set_vring_enable", 1, True)]  # no PROTOCOL_FEATURES
    s = h.session
    assert s.owner and s.acked_features == 1 and s.memory_table
    assert (s.rings[1].num, s.rings[1].started, s.rings[1].enabled) == (256, True, True)
    assert h.handle(msg(Request.GET_VRING_BASE, VringState(1, 0).pack())) is not None
    assert dev.calls[-1] == ("get_vring_base", 1) and not s.rings[1].started
    h.close()
    assert dev.calls[-1] == ("reset",)
    assert not s.memory_table and s.rings[1].num == 0 and s.owner  # the session ended; the owner stays


def test_a_kick_enables_the_ring_only_without_protocol_features():
    dev = FakeDevice()
    h = BackendHandler("p", dev)
    h.handle(msg(Request.SET_FEATURES, U64.pack(bit(VHOST_USER_F_PROTOCOL_FEATURES))))
    h.handle(msg(Request.SET_VRING_KICK, U64.pack(0 | VRING_NOFD_MASK)))
    assert dev.calls[-1] == ("set_vring_kick", 0, None) and not h.session.rings[0].enabled
    h.handle(msg(Request.SET_VRING_ENABLE, VringState(0, 1).pack()))
    assert dev.calls[-1] == ("set_vring_enable", 0, True) and h.session.rings[0].enabled


@pytest.mark.parametrize("setup, reason", [
    ([], "SET_VRING_ADDR before SET_MEM_TABLE"),
    (["mem"], "SET_VRING_ADDR before SET_VRING_NUM"),
], ids=["no_memory_table", "no_ring_size"])
def test_ring_address_out_of_order_is_refused_before_the_device_sees_it(setup, reason):
    dev = FakeDevice()
    h = BackendHandler("p", dev)
    if "mem" in setup:
        h.handle(memory_table_message())
    calls = len(dev.calls)
    with pytest.raises(ProtocolError, match=reason):
        h.handle(msg(Request.SET_VRING_ADDR, VringAddr(0, 0, 0, 0, 0, 0).pack()))
    assert len(dev.calls) == calls


@pytest.mark.parametrize("refuse, request_, payload, text", [
    ("set_vring_num", Request.SET_VRING_NUM, VringState(0, 100).pack(), "set_vring_num refused"),
    ("set_mem_table", Request.SET_MEM_TABLE, None, "SET_MEM_TABLE: set_mem_table refused"),
], ids=["ring_size", "memory_table"])
def test_a_device_refusal_is_a_protocol_error(refuse, request_, payload, text):
    h = BackendHandler("p", FakeDevice(refuse=refuse))
    m = memory_table_message() if payload is None else msg(request_, payload)
    with pytest.raises(ProtocolError) as e:
        h.handle(m)
    assert str(e.value) == text
    assert not h.session.memory_table and h.session.rings[0].num == 0


def test_ring_index_is_checked_against_the_device_and_replies_follow_the_session():
    dev = FakeDevice(queue_num=2)
    h = BackendHandler("p", dev)
    with pytest.raises(ProtocolError, match="ring index 4 out of range"):
        h.handle(msg(Request.SET_VRING_ENABLE, VringState(4, 1).pack()))
    assert U64.pack(2) in h.handle(msg(Request.GET_QUEUE_NUM))
    offered = U64.unpack(h.handle(msg(Request.GET_PROTOCOL_FEATURES))[-8:])[0]
    assert offered & bit(ProtocolFeature.MQ)
    assert h.handle(msg(Request.SET_OWNER, flags=FLAG_VERSION | FLAG_NEED_REPLY)) is None  # no REPLY_ACK yet
    h.handle(msg(Request.SET_PROTOCOL_FEATURES, U64.pack(bit(ProtocolFeature.REPLY_ACK))))
    assert h.handle(msg(Request.SET_OWNER, flags=FLAG_VERSION | FLAG_NEED_REPLY)) is not None


def test_the_transport_does_not_import_the_device():
    code = ("import sys, vhea.handler, vhea.connection; "
            "print(sorted(m for m in ('vhea.net', 'vhea.vring', 'vhea.memory', 'vhea.net_backend') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 45), st.binary(max_size=80), st.integers(0, 2)), max_size=12))
def test_handler_raises_nothing_but_protocol_error_on_any_request_sequence(requests):
    """Whatever a front-end sends, the handler answers or raises ProtocolError, and never leaks an fd."""
    before = set(os.listdir("/proc/self/fd"))
    h = BackendHandler("fuzz", NetBackend(2, "fuzz"))
    try:
        for req, payload, nfds in requests:
            fds = [os.eventfd(0) for _ in range(nfds)]
            msg = Message(Header(req, FLAG_VERSION, len(payload)), payload, fds)
            try:
                h.handle(msg)
            except ProtocolError:
                pass
    finally:
        h.close()
    assert set(os.listdir("/proc/self/fd")) <= before

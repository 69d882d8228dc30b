"""vhost-user request handler: one method per request, chosen from a table that also says which carry fds.

Like DPDK's vhost_message_handlers: fds on a message that must not carry them are closed before the
handler runs; a request that is not in the table, or whose payload is malformed, is a ProtocolError and the
connection closes. The handler decodes and checks requests and keeps the session state; the device behind
the VhostUserBackend interface changes, and the server reacts to it (kick fds, calls).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .eventfds import is_eventfd
from .protocol import (
    FLAG_NEED_REPLY,
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    MemoryTable,
    Message,
    ProtocolError,
    ProtocolFeature,
    Request,
    VringAddr,
    VringState,
    bit,
    pack_reply,
    request_name,
    unpack_u64,
)
from .session import SessionState
from .vhost_backend import BackendError, VhostUserBackend

log = logging.getLogger(__name__)

OFFERED_PROTOCOL_FEATURES_1Q = bit(ProtocolFeature.REPLY_ACK)
OFFERED_PROTOCOL_FEATURES_MQ = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK)

#: fds a request may carry: 0 none, 1 exactly one (unless the NOFD bit says none), "n" one per region.
NO_FDS, ONE_FD, REGION_FDS = 0, 1, 2

Device = TypeVar("Device", bound=VhostUserBackend)


@dataclass(frozen=True, slots=True)
class Entry:
    method: Callable[[BackendHandler, Message], bytes | None]
    fds: int
    has_reply: bool = False


class BackendHandler(Generic[Device]):
    """One vhost-user session (a connected front-end) for one port, driving `device`."""

    def __init__(self, port: str, device: Device) -> None:
        self.port = port
        self.device = device
        self.session = SessionState.new(device.vring_count)

    # ---- dispatch ------------------------------------------------------------------------------------------

    def handle(self, msg: Message) -> bytes | None:
        """Run one request; returns the bytes to send back (reply and/or ack) or None.

        Raises ProtocolError (connection must close). fds are always consumed or closed.
        """
        entry = TABLE.get(msg.request)
        try:
            if entry is None:
                raise ProtocolError(f"unknown or unsupported request {msg.request}")
            if entry.fds == NO_FDS and msg.fds:
                log.warning("port %s: %s carried %d fd(s); closed them", self.port,
                            request_name(msg.request), len(msg.fds))
                msg.close_fds()
            reply = entry.method(self, msg)
        finally:
            msg.close_fds()  # whatever the handler did not take
        if reply is not None:
            return pack_reply(msg.request, reply)
        if msg.header.flags & FLAG_NEED_REPLY and self.reply_ack:
            return pack_reply(msg.request, U64.pack(0))
        return None

    @property
    def reply_ack(self) -> bool:
        return bool(self.session.protocol_features & bit(ProtocolFeature.REPLY_ACK))

    def close(self) -> None:
        """The session ends: the device lets go of its rings and memory."""
        self.device.reset()
        self.session.end()

    def ring_index(self, index: int) -> int:
        count = self.device.vring_count
        if not 0 <= index < count:
            raise ProtocolError(f"ring index {index} out of range ({count} rings)")
        return index

    def take_one_fd(self, msg: Message, what: str) -> tuple[int, int | None]:
        """(ring index, fd or None) of a SET_VRING_KICK/CALL/ERR: the index and the NOFD bit checked."""
        value = unpack_u64(msg.payload)
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise ProtocolError(f"{what}: unknown bits in {value:#x}")
        index = self.ring_index(value & VRING_IDX_MASK)
        if value & VRING_NOFD_MASK:
            if msg.fds:
                raise ProtocolError(f"{what}: NOFD flag but {len(msg.fds)} fd(s) sent")
            return index, None
        if len(msg.fds) != 1:
            raise ProtocolError(f"{what}: expected 1 fd, got {len(msg.fds)}")
        if not is_eventfd(msg.fds[0]):  # a pipe would block our writes once full (docs: "Limits")
            raise ProtocolError(f"{what}: the fd is not an eventfd")
        return index, msg.fds.pop()

    def offered_protocol_features(self) -> int:
        return OFFERED_PROTOCOL_FEATURES_MQ if self.device.queue_num > 1 else OFFERED_PROTOCOL_FEATURES_1Q

    # ---- requests ------------------------------------------------------------------------------------------

    def get_features(self, msg: Message) -> bytes:
        return U64.pack(self.device.offered_features())

    def set_features(self, msg: Message) -> None:
        features = unpack_u64(msg.payload)
        offered = self.device.offered_features()
        if features & ~offered:
            raise ProtocolError(f"SET_FEATURES {features:#x} has bits we did not offer ({features & ~offered:#x})")
        self.session.acked_features = features
        self.device.set_features(features)
        log.info("port %s: features %#x", self.port, features)

    def get_protocol_features(self, msg: Message) -> bytes:
        return U64.pack(self.offered_protocol_features())

    def set_protocol_features(self, msg: Message) -> None:
        features = unpack_u64(msg.payload)
        if features & ~self.offered_protocol_features():
            raise ProtocolError(f"SET_PROTOCOL_FEATURES {features:#x} has bits we did not offer")
        self.session.protocol_features = features

    def set_owner(self, msg: Message) -> None:
        self.session.owner = True  # QEMU sends it once per queue-pair vhost_dev; repeats are harmless

    def reset_owner(self, msg: Message) -> None:
        self.session.owner = False
        self.close()
        self.device.set_features(0)
        self.session.acked_features = 0

    def set_mem_table(self, msg: Message) -> None:
        table = MemoryTable.unpack(msg.payload)
        if len(msg.fds) != len(table.regions):
            raise ProtocolError(f"SET_MEM_TABLE: {len(table.regions)} regions but {len(msg.fds)} fds")
        fds, msg.fds = msg.fds, []
        try:
            self.device.set_mem_table(table.regions, fds)
        except BackendError as e:
            raise ProtocolError(f"SET_MEM_TABLE: {e}") from e
        self.session.memory_table = True
        log.info("port %s: memory table with %d region(s): %s", self.port, len(table.regions),
                 ", ".join(f"gpa {x.guest_phys_addr:#x} size {x.memory_size:#x}" for x in table.regions))

    def set_vring_num(self, msg: Message) -> None:
        st = VringState.unpack(msg.payload)
        index = self.ring_index(st.index)
        try:
            self.device.set_vring_num(index, st.num)
        except BackendError as e:
            raise ProtocolError(str(e)) from e
        self.session.rings[index].num = st.num

    def set_vring_addr(self, msg: Message) -> None:
        addr = VringAddr.unpack(msg.payload)
        index = self.ring_index(addr.index)
        if not self.session.memory_table:
            raise ProtocolError("SET_VRING_ADDR before SET_MEM_TABLE")
        if self.session.rings[index].num == 0:
            raise ProtocolError("SET_VRING_ADDR before SET_VRING_NUM")
        try:
            self.device.set_vring_addr(addr)
        except BackendError as e:
            raise ProtocolError(str(e)) from e

    def set_vring_base(self, msg: Message) -> None:
        st = VringState.unpack(msg.payload)
        index = self.ring_index(st.index)
        if st.num > 0xFFFF:
            raise ProtocolError(f"SET_VRING_BASE {st.num} is not a 16-bit index")
        self.device.set_vring_base(index, st.num)

    def get_vring_base(self, msg: Message) -> bytes:
        st = VringState.unpack(msg.payload)
        index = self.ring_index(st.index)
        base = self.device.get_vring_base(index)
        self.session.rings[index].started = False
        log.info("port %s: ring %d stopped by GET_VRING_BASE at %d", self.port, index, base)
        return VringState(st.index, base).pack()

    def set_vring_kick(self, msg: Message) -> None:
        index, fd = self.take_one_fd(msg, "SET_VRING_KICK")
        ring = self.session.rings[index]
        self.device.set_vring_kick(index, fd)
        ring.started = True
        if not self.session.acked_features & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            self.device.set_vring_enable(index, True)  # without PROTOCOL_FEATURES a ring is enabled as it starts
            ring.enabled = True
        log.info("port %s: ring %d started (enabled=%s)", self.port, index, ring.enabled)

    def set_vring_call(self, msg: Message) -> None:
        index, fd = self.take_one_fd(msg, "SET_VRING_CALL")
        self.device.set_vring_call(index, fd)

    def set_vring_err(self, msg: Message) -> None:
        index, fd = self.take_one_fd(msg, "SET_VRING_ERR")
        self.device.set_vring_err(index, fd)

    def get_queue_num(self, msg: Message) -> bytes:
        return U64.pack(self.device.queue_num)

    def set_vring_enable(self, msg: Message) -> None:
        st = VringState.unpack(msg.payload)
        index = self.ring_index(st.index)
        enabled = bool(st.num)
        self.device.set_vring_enable(index, enabled)
        self.session.rings[index].enabled = enabled
        log.info("port %s: ring %d %s", self.port, index, "enabled" if enabled else "disabled")


def _table() -> dict[int, Entry]:
    h = BackendHandler
    return {
        Request.GET_FEATURES: Entry(h.get_features, NO_FDS, True),
        Request.SET_FEATURES: Entry(h.set_features, NO_FDS),
        Request.SET_OWNER: Entry(h.set_owner, NO_FDS),
        Request.RESET_OWNER: Entry(h.reset_owner, NO_FDS),
        Request.SET_MEM_TABLE: Entry(h.set_mem_table, REGION_FDS),
        Request.SET_VRING_NUM: Entry(h.set_vring_num, NO_FDS),
        Request.SET_VRING_ADDR: Entry(h.set_vring_addr, NO_FDS),
        Request.SET_VRING_BASE: Entry(h.set_vring_base, NO_FDS),
        Request.GET_VRING_BASE: Entry(h.get_vring_base, NO_FDS, True),
        Request.SET_VRING_KICK: Entry(h.set_vring_kick, ONE_FD),
        Request.SET_VRING_CALL: Entry(h.set_vring_call, ONE_FD),
        Request.SET_VRING_ERR: Entry(h.set_vring_err, ONE_FD),
        Request.GET_PROTOCOL_FEATURES: Entry(h.get_protocol_features, NO_FDS, True),
        Request.SET_PROTOCOL_FEATURES: Entry(h.set_protocol_features, NO_FDS),
        Request.GET_QUEUE_NUM: Entry(h.get_queue_num, NO_FDS, True),
        Request.SET_VRING_ENABLE: Entry(h.set_vring_enable, NO_FDS),
    }


TABLE = _table()

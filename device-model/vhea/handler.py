"""vhost-user request handler: one method per request, chosen from a table that also says which carry fds.

Like DPDK's vhost_message_handlers: fds on a message that must not carry them are closed before the
handler runs; a request that is not in the table, or whose payload is malformed, is a ProtocolError and the
connection closes. The handler changes device state only; the server reacts to it (kick fds, calls).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from .memory import AddressError, GuestMemory
from .net import VirtioNet, offered_features
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
from .vring import RingError, Vring

log = logging.getLogger(__name__)

OFFERED_PROTOCOL_FEATURES_1Q = bit(ProtocolFeature.REPLY_ACK)
OFFERED_PROTOCOL_FEATURES_MQ = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK)

#: fds a request may carry: 0 none, 1 exactly one (unless the NOFD bit says none), "n" one per region.
NO_FDS, ONE_FD, REGION_FDS = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Entry:
    method: Callable[[BackendHandler, Message], bytes | None]
    fds: int
    has_reply: bool = False


class BackendHandler:
    """State of one vhost-user session (a connected front-end) for one port."""

    def __init__(self, port: str, queue_pairs: int) -> None:
        self.port = port
        self.device = VirtioNet(queue_pairs)
        self.acked_features = 0
        self.protocol_features = 0
        self.owner = False

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
        return bool(self.protocol_features & bit(ProtocolFeature.REPLY_ACK))

    def close(self) -> None:
        for r in self.device.rings:
            r.reset()
        if self.device.mem is not None:
            self.device.mem.close()
            self.device.mem = None

    def ring(self, index: int) -> Vring:
        if not 0 <= index < len(self.device.rings):
            raise ProtocolError(f"ring index {index} out of range ({len(self.device.rings)} rings)")
        return self.device.rings[index]

    def take_one_fd(self, msg: Message, what: str) -> tuple[Vring, int | None]:
        value = unpack_u64(msg.payload)
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise ProtocolError(f"{what}: unknown bits in {value:#x}")
        ring = self.ring(value & VRING_IDX_MASK)
        if value & VRING_NOFD_MASK:
            if msg.fds:
                raise ProtocolError(f"{what}: NOFD flag but {len(msg.fds)} fd(s) sent")
            return ring, None
        if len(msg.fds) != 1:
            raise ProtocolError(f"{what}: expected 1 fd, got {len(msg.fds)}")
        return ring, msg.fds.pop()

    # ---- requests ------------------------------------------------------------------------------------------

    def get_features(self, msg: Message) -> bytes:
        return U64.pack(offered_features(self.device.queue_pairs))

    def set_features(self, msg: Message) -> None:
        features = unpack_u64(msg.payload)
        offered = offered_features(self.device.queue_pairs)
        if features & ~offered:
            raise ProtocolError(f"SET_FEATURES {features:#x} has bits we did not offer ({features & ~offered:#x})")
        self.acked_features = features
        self.device.set_features(features)
        log.info("port %s: features %#x", self.port, features)

    def get_protocol_features(self, msg: Message) -> bytes:
        offered = OFFERED_PROTOCOL_FEATURES_MQ if self.device.queue_pairs > 1 else OFFERED_PROTOCOL_FEATURES_1Q
        return U64.pack(offered)

    def set_protocol_features(self, msg: Message) -> None:
        features = unpack_u64(msg.payload)
        offered = OFFERED_PROTOCOL_FEATURES_MQ if self.device.queue_pairs > 1 else OFFERED_PROTOCOL_FEATURES_1Q
        if features & ~offered:
            raise ProtocolError(f"SET_PROTOCOL_FEATURES {features:#x} has bits we did not offer")
        self.protocol_features = features

    def set_owner(self, msg: Message) -> None:
        self.owner = True  # QEMU sends it once per queue-pair vhost_dev; repeats are harmless

    def reset_owner(self, msg: Message) -> None:
        self.owner = False
        self.close()
        self.device.set_features(0)
        self.acked_features = 0

    def set_mem_table(self, msg: Message) -> None:
        table = MemoryTable.unpack(msg.payload)
        if len(msg.fds) != len(table.regions):
            raise ProtocolError(f"SET_MEM_TABLE: {len(table.regions)} regions but {len(msg.fds)} fds")
        fds, msg.fds = msg.fds, []
        try:
            mem = GuestMemory.map(table.regions, fds)
        except AddressError as e:
            raise ProtocolError(f"SET_MEM_TABLE: {e}") from e
        old = self.device.mem
        for r in self.device.rings:
            r.unmap()
        self.device.mem = mem
        if old is not None:
            old.close()
        for r in self.device.rings:
            if r.addr is not None:
                try:
                    r.map(mem)
                except RingError as e:
                    r.stop(str(e))
                    log.warning("port %s: ring %d stopped: %s", self.port, r.index, e)
        log.info("port %s: memory table with %d region(s): %s", self.port, len(table.regions),
                 ", ".join(f"gpa {x.guest_phys_addr:#x} size {x.memory_size:#x}" for x in table.regions))

    def set_vring_num(self, msg: Message) -> None:
        st = VringState.unpack(msg.payload)
        try:
            self.ring(st.index).set_num(st.num)
        except RingError as e:
            raise ProtocolError(str(e)) from e

    def set_vring_addr(self, msg: Message) -> None:
        addr = VringAddr.unpack(msg.payload)
        ring = self.ring(addr.index)
        if self.device.mem is None:
            raise ProtocolError("SET_VRING_ADDR before SET_MEM_TABLE")
        if ring.num == 0:
            raise ProtocolError("SET_VRING_ADDR before SET_VRING_NUM")
        ring.addr = addr
        ring.error = None
        try:
            ring.map(self.device.mem)
        except RingError as e:
            raise ProtocolError(str(e)) from e
        base = ring.last_avail_idx
        ring.sync_used_idx()
        if ring.used_idx != 0 or base != 0:  # a front-end that reconnects (QEMU reconnect=1) or a ring restarted
            log.info("port %s: ring %d resumes at used idx %d (SET_VRING_BASE gave %d)", self.port, ring.index,
                     ring.used_idx, base)

    def set_vring_base(self, msg: Message) -> None:
        st = VringState.unpack(msg.payload)
        ring = self.ring(st.index)
        if st.num > 0xFFFF:
            raise ProtocolError(f"SET_VRING_BASE {st.num} is not a 16-bit index")
        ring.last_avail_idx = st.num
        ring.used_idx = st.num
        ring.signalled_used_valid = False

    def get_vring_base(self, msg: Message) -> bytes:
        st = VringState.unpack(msg.payload)
        ring = self.ring(st.index)
        base = ring.last_avail_idx
        ring.started = False
        if ring.kick_fd is not None:
            os.close(ring.kick_fd)
            ring.kick_fd = None
        ring.error = None
        log.info("port %s: ring %d stopped by GET_VRING_BASE at %d", self.port, ring.index, base)
        return VringState(st.index, base).pack()

    def set_vring_kick(self, msg: Message) -> None:
        ring, fd = self.take_one_fd(msg, "SET_VRING_KICK")
        if ring.kick_fd is not None:
            os.close(ring.kick_fd)
        ring.kick_fd = fd
        ring.started = True
        if not self.acked_features & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            ring.enabled = True  # without PROTOCOL_FEATURES a ring is enabled as soon as it starts
        log.info("port %s: ring %d started (enabled=%s)", self.port, ring.index, ring.enabled)

    def set_vring_call(self, msg: Message) -> None:
        ring, fd = self.take_one_fd(msg, "SET_VRING_CALL")
        if ring.call_fd is not None:
            os.close(ring.call_fd)
        ring.call_fd = fd

    def set_vring_err(self, msg: Message) -> None:
        ring, fd = self.take_one_fd(msg, "SET_VRING_ERR")
        if ring.err_fd is not None:
            os.close(ring.err_fd)
        ring.err_fd = fd

    def get_queue_num(self, msg: Message) -> bytes:
        return U64.pack(self.device.queue_pairs)

    def set_vring_enable(self, msg: Message) -> None:
        st = VringState.unpack(msg.payload)
        ring = self.ring(st.index)
        ring.enabled = bool(st.num)
        log.info("port %s: ring %d %s", self.port, ring.index, "enabled" if ring.enabled else "disabled")


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

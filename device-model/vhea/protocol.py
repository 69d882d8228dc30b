"""vhost-user wire format: message header, payload structs, and a sans-I/O parser.

Nothing here touches a socket. The parser is fed bytes plus the file descriptors that arrived with them
and yields whole `Message`s; the connection layer owns the I/O (h11 / rust-vmm message.rs style).
Reference: QEMU docs/interop/vhost-user.rst.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size  # 12
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")

FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VERSION_MASK = 0x3

#: Largest payload we accept; the biggest real message (GET_CONFIG) is 12 + 256 bytes.
MAX_PAYLOAD = 4096
#: QEMU's VHOST_MEMORY_BASELINE_NREGIONS without CONFIGURE_MEM_SLOTS.
MAX_MEM_REGIONS = 8
#: Ancillary-data room: more fds than any message may carry, so extras are seen (and closed), not truncated.
MAX_FDS = 32

VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100


class Request(enum.IntEnum):
    """Front-end requests (VhostUserRequest in QEMU)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    """Bit numbers of VHOST_USER_PROTOCOL_F_*."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CONFIG = 9
    RESET_DEVICE = 13
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# virtio feature bits (virtio spec 1.2)
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_MQ = 22
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_IN_ORDER = 35


def request_name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"


def bit(n: int) -> int:
    return 1 << n


class ProtocolError(Exception):
    """The peer broke the wire format; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class Header:
    request: int
    flags: int
    size: int

    def pack(self) -> bytes:
        return HEADER.pack(self.request, self.flags, self.size)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        request, flags, size = HEADER.unpack(data)
        if flags & VERSION_MASK != FLAG_VERSION:
            raise ProtocolError(f"bad version in flags {flags:#x} (request {request})")
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"payload size {size} over the {MAX_PAYLOAD}-byte limit (request {request})")
        return cls(request, flags, size)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


@dataclass(slots=True)
class Message:
    """One request as received: header, raw payload, and the fds that came with it (caller closes them)."""

    header: Header
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def request(self) -> int:
        return self.header.request

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


@dataclass(frozen=True, slots=True)
class VringState:
    index: int
    num: int

    def pack(self) -> bytes:
        return VRING_STATE.pack(self.index, self.num)

    @classmethod
    def unpack(cls, data: bytes) -> VringState:
        expect_size(data, VRING_STATE.size, "vring state")
        return cls(*VRING_STATE.unpack(data))


@dataclass(frozen=True, slots=True)
class VringAddr:
    """Ring addresses in the front-end's (QEMU's) virtual address space, not guest-physical."""

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int

    def pack(self) -> bytes:
        return VRING_ADDR.pack(
            self.index,
            self.flags,
            self.desc_user_addr,
            self.used_user_addr,
            self.avail_user_addr,
            self.log_guest_addr,
        )

    @classmethod
    def unpack(cls, data: bytes) -> VringAddr:
        expect_size(data, VRING_ADDR.size, "vring address")
        return cls(*VRING_ADDR.unpack(data))


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    def pack(self) -> bytes:
        return MEM_REGION.pack(self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset)


@dataclass(frozen=True, slots=True)
class MemoryTable:
    regions: tuple[MemoryRegion, ...]

    def pack(self) -> bytes:
        return MEM_HEADER.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def unpack(cls, data: bytes) -> MemoryTable:
        if len(data) < MEM_HEADER.size:
            raise ProtocolError(f"memory table payload is {len(data)} bytes, shorter than its header")
        nregions, _padding = MEM_HEADER.unpack_from(data)
        if not 1 <= nregions <= MAX_MEM_REGIONS:
            raise ProtocolError(f"memory table has {nregions} regions (allowed 1..{MAX_MEM_REGIONS})")
        # QEMU sends only the used regions; older front-ends send all 8 slots.
        if len(data) not in (MEM_HEADER.size + nregions * MEM_REGION.size,
                             MEM_HEADER.size + MAX_MEM_REGIONS * MEM_REGION.size):
            raise ProtocolError(f"memory table payload is {len(data)} bytes for {nregions} regions")
        regions = []
        for i in range(nregions):
            r = MemoryRegion(*MEM_REGION.unpack_from(data, MEM_HEADER.size + i * MEM_REGION.size))
            if r.memory_size == 0:
                raise ProtocolError(f"memory region {i} has size 0")
            for name, value in (("guest_phys_addr", r.guest_phys_addr), ("userspace_addr", r.userspace_addr)):
                if value + r.memory_size > 1 << 64:
                    raise ProtocolError(f"memory region {i} {name} + size wraps past 2**64")
            regions.append(r)
        return cls(tuple(regions))


def expect_size(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ProtocolError(f"{what} payload is {len(data)} bytes, expected {size}")


def unpack_u64(data: bytes) -> int:
    expect_size(data, U64.size, "u64")
    return U64.unpack(data)[0]


def pack_message(request: int, payload: bytes = b"", flags: int = FLAG_VERSION) -> bytes:
    return Header(request, flags, len(payload)).pack() + payload


def pack_reply(request: int, payload: bytes) -> bytes:
    return pack_message(request, payload, FLAG_VERSION | FLAG_REPLY)


class MessageParser:
    """Sans-I/O framing: say how many bytes are wanted next, accept them with their fds, emit messages.

    fds are attached to the message whose header they arrived with (QEMU sends each message with one
    sendmsg, and a Unix stream socket never merges a segment carrying fds into an earlier read).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header: Header | None = None
        self._fds: list[int] = []

    def wanted(self) -> int:
        """Bytes to read next: the rest of the header, or the rest of the payload."""
        if self._header is None:
            return HEADER_SIZE - len(self._buf)
        return self._header.size - len(self._buf)

    def feed(self, data: bytes, fds: list[int] | None = None) -> list[Message]:
        """Add bytes (and fds); return the messages completed. Raises ProtocolError on bad framing."""
        if fds:
            self._fds.extend(fds)
        out: list[Message] = []
        view = memoryview(data)
        while True:
            if self._header is None:
                take = min(HEADER_SIZE - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < HEADER_SIZE:
                    break
                try:
                    self._header = Header.unpack(bytes(self._buf))
                except ProtocolError:
                    for msg in out:  # completed in this call but never handed out: their fds are ours to close
                        msg.close_fds()
                    self.close_pending()
                    raise
                self._buf.clear()
            take = min(self._header.size - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < self._header.size:
                break
            out.append(Message(self._header, bytes(self._buf), self._fds))
            self._header, self._fds = None, []
            self._buf = bytearray()
            if not view:
                break
        return out

    def close_pending(self) -> None:
        """Close fds of a half-received message (connection is going away)."""
        Message(Header(0, 0, 0), b"", self._fds).close_fds()
        self._fds = []

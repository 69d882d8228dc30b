"""Shared-memory layout and command entries: pure data, no I/O (sans-I/O; unit-tested on its own).

One memfd per attached application holds everything the application and the dispatcher share::

    page 0        app header: magic/version, dispatcher-sleeping flag, kicks, pending-socket bitmap (one bit
                  per socket with posted commands)
    then          one 128-byte header per notification ring: a consumer line (head, sleepers) and a
                  dispatcher line (tail, doorbells rung, doorbells saved, entries dropped)
    then          notif_rings notification rings (dispatcher -> application), 16-byte entries: one per CPU
                  of the application's machine; a socket's events go to the ring its front-end names in
                  C_NOTIF_RING (the CPU of the thread that last waited on it), each ring has its own
                  doorbell eventfd, rung only when a thread announced in that ring's sleepers that it sleeps
    then per socket (max_sockets blocks of sock_stride bytes):
                  control page: one cache line per writer (front-end lines apart from dispatcher lines)
                  command queue: cmdq_slots 64-byte entries (Vyukov MPSC, see queues.py)
                  tx byte ring (front-end writes, dispatcher drains into the kernel)
                  rx byte ring (dispatcher fills from the kernel, front-end reads)

Every index is a free-running u64 counter (never reset, never wraps in practice), the ring offset is the
counter modulo the power-of-two size, and "bytes in ring" is tail - head.  The dispatcher trusts none of it.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

CACHE_LINE = 64
PAGE = 4096
MAGIC = 0x4B434154534F5349  # b"ISOSTACK" little-endian
VERSION = 1
MAX_SOCKETS_LIMIT = 4096
MAX_RING = 1 << 26

# App header, u64 word indices.
H_MAGIC, H_VERSION = 0, 1
H_DISP_SLEEPING = 128 // 8  # dispatcher is about to block in epoll: producers must kick it
H_KICKS = 256 // 8 + 1
H_PENDING = 512 // 8  # bitmap, max_sockets bits
HEADER_SIZE = PAGE

# Notification ring header (RING_HDR bytes each, after the app header), u64 word offsets within it.
RING_HDR = 128
R_HEAD, R_SLEEPERS = 0, 1  # consumer line: head; front-end threads about to block on this ring's doorbell
R_TAIL, R_RUNG, R_SAVED, R_DROPPED = 8, 9, 10, 11  # dispatcher line
MAX_RINGS = 64

# Socket control page, u64 word indices; one cache line per writer.
C_CMD_TAIL = 0  # producers (CAS)
C_TX_TAIL = 64 // 8  # front-end
C_RX_HEAD = 128 // 8  # front-end
C_TX_WANT = 192 // 8  # front-end threads waiting for tx credits (fetch_add +1/-1); dispatcher only reads
C_DRAINING = 256 // 8  # 1 while the dispatcher drains the tx ring (xchg on both sides)
C_TX_HEAD, C_RX_TAIL = 320 // 8, 320 // 8 + 1  # dispatcher
C_STATE, C_ERR, C_RES_SEQ, C_RES_VAL = 384 // 8, 384 // 8 + 1, 384 // 8 + 2, 384 // 8 + 3  # dispatcher
C_OWNER, C_RX_CPU = 384 // 8 + 4, 384 // 8 + 5  # dispatcher: owning instance, CPU that last received for it
C_OPTVAL = 384 // 8 + 6  # dispatcher: the value a GETSOCKOPT read
C_ADDR_FAMILY, C_ADDR_PORT, C_ADDR_IP0, C_ADDR_IP1 = 448 // 8, 448 // 8 + 1, 448 // 8 + 2, 448 // 8 + 3
C_NOTIF_RING = 512 // 8  # front-end: the notification ring this socket's events go to (validated < notif_rings)
C_WATCH_ARMED = 512 // 8 + 1  # front-end sets it when it drained the socket's readiness eventfd; we clear it
CONTROL_SIZE = PAGE

# Socket state bits (C_STATE, written by the dispatcher only).
ST_OPEN = 1 << 0
ST_CONNECTING = 1 << 1
ST_CONNECTED = 1 << 2
ST_LISTENING = 1 << 3
ST_EOF = 1 << 4  # the peer sent FIN: once the rx ring is empty, recv returns b""
ST_ERROR = 1 << 5  # C_ERR holds the errno; the socket is dead
ST_CLOSED = 1 << 6  # the dispatcher released the slot: the front-end may reuse it
ST_TX_SHUT = 1 << 7
ST_ACCEPTABLE = 1 << 8  # the kernel listener has a connection waiting

# Notification events (bit mask in a notification entry).
EV_RX, EV_TX, EV_DONE, EV_ERR, EV_EOF, EV_ACCEPT = 1, 2, 4, 8, 16, 32
NOTIF_ENTRY = struct.Struct("<IIQ")  # socket, events, socket's C_RES_SEQ at post time
assert NOTIF_ENTRY.size == 16


class Op:
    SOCKET = 1
    BIND = 2
    LISTEN = 3
    ACCEPT = 4
    CONNECT = 5
    SEND = 6
    SHUTDOWN = 7
    CLOSE = 8
    SETSOCKOPT = 9
    GETSOCKNAME = 10
    GETPEERNAME = 11
    GETSOCKOPT = 12


OP_NAMES = {v: k for k, v in vars(Op).items() if not k.startswith("_")}

# Command entry: 64 bytes = slot sequence u64 | position u64 | body (48 bytes, written by iso_mpsc_push).
ENTRY_SIZE = 64
BODY = struct.Struct("<HHIQQQ16s")  # op, flags, socket, a, b, c, ip
ENTRY = struct.Struct("<QQHHIQQQ16s")
assert BODY.size == 48 and ENTRY.size == ENTRY_SIZE

SOCKOPT_ALLOWED = {
    (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    (socket.SOL_SOCKET, socket.SO_REUSEPORT),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    (socket.SOL_SOCKET, socket.SO_SNDBUF),
    (socket.SOL_SOCKET, socket.SO_RCVBUF),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
}
GETSOCKOPT_ALLOWED = SOCKOPT_ALLOWED | {
    (socket.SOL_SOCKET, socket.SO_ERROR),
    (socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
    (socket.SOL_SOCKET, getattr(socket, "SO_INCOMING_CPU", 49)),
    (socket.SOL_SOCKET, getattr(socket, "SO_BUSY_POLL", 46)),
    (socket.IPPROTO_TCP, socket.TCP_MAXSEG),
}  # integer options only: the value comes back in one u64 word (C_OPTVAL)
FAMILIES = (socket.AF_INET, socket.AF_INET6)


class LayoutError(ValueError):
    """Geometry an application asked for is invalid."""


class BadEntry(Exception):
    """A command entry that fails validation: fails its socket with `err`."""

    def __init__(self, err: int, reason: str):
        super().__init__(reason)
        self.err = err
        self.reason = reason


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _round(n: int, to: int = PAGE) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class Geometry:
    """Sizes of one application's region; the dispatcher recomputes every offset from these."""

    max_sockets: int = 64
    cmdq_slots: int = 64
    tx_size: int = 1 << 18
    rx_size: int = 1 << 18
    notif_slots: int = 1024
    notif_rings: int = 0  # 0: one per CPU of this machine (see resolved()); the dispatcher needs 1..MAX_RINGS

    def resolved(self) -> Geometry:
        """notif_rings = 0 replaced by the number of CPUs (at most MAX_RINGS; a thread on CPU c uses ring
        c % notif_rings)."""
        if self.notif_rings:
            return self
        import dataclasses
        import os

        return dataclasses.replace(self, notif_rings=max(1, min(MAX_RINGS, os.cpu_count() or 1)))

    def check(self) -> Geometry:
        if not 1 <= self.max_sockets <= MAX_SOCKETS_LIMIT:
            raise LayoutError(f"max_sockets {self.max_sockets} not in 1..{MAX_SOCKETS_LIMIT}")
        for name in ("cmdq_slots", "notif_slots"):
            v = getattr(self, name)
            if not (_pow2(v) and 2 <= v <= 65536):
                raise LayoutError(f"{name} {v} must be a power of two in 2..65536")
        for name in ("tx_size", "rx_size"):
            v = getattr(self, name)
            if not (_pow2(v) and PAGE <= v <= MAX_RING):
                raise LayoutError(f"{name} {v} must be a power of two in {PAGE}..{MAX_RING}")
        if not 0 <= self.notif_rings <= MAX_RINGS:
            raise LayoutError(f"notif_rings {self.notif_rings} not in 1..{MAX_RINGS}")
        return self

    @property
    def rings(self) -> int:
        return self.notif_rings or 1

    def ring_word(self, r: int) -> int:
        """u64 word index of ring r's header."""
        return (HEADER_SIZE + r * RING_HDR) // 8

    @property
    def ring_bytes(self) -> int:
        return _round(self.notif_slots * NOTIF_ENTRY.size)

    def ring_off(self, r: int) -> int:
        """Byte offset of notification ring r's entries."""
        return HEADER_SIZE + _round(self.rings * RING_HDR) + r * self.ring_bytes

    @property
    def notif_off(self) -> int:  # ring 0 (what callers written for one ring use)
        return self.ring_off(0)

    @property
    def sock_base(self) -> int:
        return self.ring_off(self.rings)

    @property
    def cmdq_bytes(self) -> int:
        return _round(self.cmdq_slots * ENTRY_SIZE)

    @property
    def sock_stride(self) -> int:
        return CONTROL_SIZE + self.cmdq_bytes + self.tx_size + self.rx_size

    @property
    def total_size(self) -> int:
        return self.sock_base + self.max_sockets * self.sock_stride

    def control_off(self, i: int) -> int:
        return self.sock_base + i * self.sock_stride

    def cmdq_off(self, i: int) -> int:
        return self.control_off(i) + CONTROL_SIZE

    def tx_off(self, i: int) -> int:
        return self.cmdq_off(i) + self.cmdq_bytes

    def rx_off(self, i: int) -> int:
        return self.tx_off(i) + self.tx_size

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        try:
            g = cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: int(Infinity) of JSON
            raise LayoutError(f"bad geometry {d!r}: {e}") from None
        if g.notif_rings < 1:
            raise LayoutError(f"notif_rings {g.notif_rings} not in 1..{MAX_RINGS}")
        return g.check()


# ------------------------------------------------------------------ addresses


def encode_addr(family: int, address: tuple) -> tuple[int, bytes]:
    """(host, port) -> (port, 16-byte ip) for a command entry; host must be a numeric address."""
    host, port = address[0], address[1]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OverflowError(f"port must be 0-65535, not {port!r}")
    if host in ("", None):
        host = "0.0.0.0" if family == socket.AF_INET else "::"
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        packed = socket.inet_pton(family, infos[0][4][0])
    return port, packed.ljust(16, b"\0")


def decode_addr(family: int, port: int, ip: bytes) -> tuple:
    if family == socket.AF_INET:
        return socket.inet_ntop(family, ip[:4]), port
    return socket.inet_ntop(family, ip[:16]), port, 0, 0


def addr_words(family: int, port: int, ip: bytes) -> tuple[int, int, int, int]:
    lo, hi = struct.unpack("<QQ", ip.ljust(16, b"\0"))
    return family, port, lo, hi


def words_addr(family: int, port: int, lo: int, hi: int) -> tuple:
    if family not in FAMILIES:
        return ("", 0)
    return decode_addr(family, port, struct.pack("<QQ", lo, hi))


# ------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Command:
    pos: int
    op: int
    flags: int
    sock: int
    a: int
    b: int
    c: int
    ip: bytes


def encode_body(op: int, sock: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"", flags: int = 0) -> bytes:
    return BODY.pack(op, flags, sock, a, b, c, ip)


def decode_command(raw: bytes | memoryview, expected_pos: int, sock: int, geometry: Geometry) -> Command:
    """Decode and validate one ready entry of socket `sock`'s queue at position `expected_pos`.

    Raises BadEntry on anything a well-behaved front-end never writes.  State-dependent checks (is the
    socket open, is the tx tail within credits) are the dispatcher's.
    """
    _seq, pos, op, flags, esock, a, b, c, ip = ENTRY.unpack(raw)
    if pos != expected_pos:
        raise BadEntry(errno.EPROTO, f"command sequence {pos} where {expected_pos} was expected")
    if esock != sock:
        raise BadEntry(errno.EBADF, f"entry names socket {esock} in the queue of socket {sock}")
    if op not in OP_NAMES:
        raise BadEntry(errno.EPROTO, f"unknown opcode {op}")
    if flags:
        raise BadEntry(errno.EINVAL, f"unknown flags {flags:#x}")
    if op == Op.SOCKET:
        if a not in FAMILIES or b != socket.SOCK_STREAM:
            raise BadEntry(errno.EAFNOSUPPORT, f"unsupported socket family {a} / type {b}")
    elif op in (Op.BIND, Op.CONNECT):
        if a not in FAMILIES or b > 65535:
            raise BadEntry(errno.EINVAL, f"bad address family {a} / port {b}")
    elif op == Op.LISTEN:
        if a > 65535:
            raise BadEntry(errno.EINVAL, f"backlog {a} out of range")
        if b:
            listen_group(b, c, bytes(ip))  # raises BadEntry
    elif op == Op.ACCEPT:
        if a >= geometry.max_sockets or a == sock:
            raise BadEntry(errno.EBADF, f"accept into socket {a} out of range")
    elif op == Op.SHUTDOWN:
        if a not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise BadEntry(errno.EINVAL, f"bad shutdown mode {a}")
    elif op == Op.SETSOCKOPT:
        if (a, b) not in SOCKOPT_ALLOWED or c > 0x7FFFFFFF:
            raise BadEntry(errno.ENOPROTOOPT, f"socket option {a}/{b}={c} not allowed")
    elif op == Op.GETSOCKOPT:
        if (a, b) not in GETSOCKOPT_ALLOWED:
            raise BadEntry(errno.ENOPROTOOPT, f"socket option {a}/{b} cannot be read")
    return Command(pos, op, flags, esock, a, b, c, bytes(ip))


MAX_GROUP = 16  # instances in one reuseport group (the LISTEN entry has 16 bytes for their CPUs)
NO_OWNER = 0xF


def encode_listen_group(cpus: list[int], queue_owner: dict[int, int]) -> tuple[int, int, bytes]:
    """(b, c, ip) of a LISTEN entry that makes the reuseport group steer by rx queue, then by CPU.

    cpus[i] is the CPU of the group's i-th member (the order in which the members listen); queue_owner maps
    an rx queue (0..15) to the index of the member that owns it.  b = member count, c = one nibble per queue.
    """
    if not 1 <= len(cpus) <= MAX_GROUP or any(not 0 <= c < 255 for c in cpus):
        raise ValueError(f"bad group CPUs {cpus}")
    c = 0
    for qi in range(16):
        owner = queue_owner.get(qi, NO_OWNER)
        if owner != NO_OWNER and not 0 <= owner < len(cpus):
            raise ValueError(f"queue {qi} owned by member {owner} of {len(cpus)}")
        c |= owner << (4 * qi)
    return len(cpus), c, bytes(cpus)


def listen_group(b: int, c: int, ip: bytes) -> tuple[list[int], dict[int, int]]:
    """Validate and decode the reuseport group of a LISTEN entry: (member CPUs, {rx queue: member index})."""
    if not 1 <= b <= MAX_GROUP:
        raise BadEntry(errno.EINVAL, f"reuseport group of {b} members (1..{MAX_GROUP})")
    cpus = list(ip[:b])
    if any(cpu == 255 for cpu in cpus):
        raise BadEntry(errno.EINVAL, f"reuseport group CPUs {cpus}")
    owners = {}
    for qi in range(16):
        owner = (c >> (4 * qi)) & 0xF
        if owner == NO_OWNER:
            continue
        if owner >= b:
            raise BadEntry(errno.EINVAL, f"rx queue {qi} owned by member {owner} of a {b}-member group")
        owners[qi] = owner
    return cpus, owners


def check_ring(head: int, tail: int, size: int, what: str) -> int:
    """Bytes in a ring whose tail the peer controls; BadEntry when the peer's index is impossible."""
    used = tail - head
    if not 0 <= used <= size:
        raise BadEntry(errno.EFAULT, f"{what} index out of range: {used} bytes in a {size}-byte ring")
    return used


def ring_spans(index: int, length: int, size: int) -> tuple[tuple[int, int], ...]:
    """(offset, length) pieces of `length` bytes at free-running `index` in a ring of `size` bytes."""
    off = index & (size - 1)
    first = min(length, size - off)
    if first == length:
        return ((off, length),)
    return ((off, first), (0, length - first))

"""A small vhost-user FRONT-END (the QEMU side), for tests and `vhea bench`: no VM needed.

It owns a memfd as "guest memory", does the real handshake over the socket with fds, lays out split rings
in that memory like a virtio driver, injects tx frames, posts rx buffers and collects what the back-end
wrote. Methods for raw messages and raw descriptors let tests play a hostile guest.
"""

from __future__ import annotations

import array
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from .net import NET_HDR, NET_HDR_LEN
from .protocol import (
    FLAG_NEED_REPLY,
    FLAG_VERSION,
    HEADER,
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    MemoryRegion,
    MemoryTable,
    ProtocolFeature,
    Request,
    VringAddr,
    VringState,
    bit,
    pack_message,
)
from .vring import DESC, USED_ELEM, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

PAGE = 4096
BUF_SIZE = 2048


class UsedEntry(NamedTuple):
    """One element of a used ring: the chain's head descriptor and the bytes the back-end wrote."""

    head: int
    length: int


class NetHeader(NamedTuple):
    """The virtio_net_hdr (with num_buffers) in front of a received frame."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int
    num_buffers: int


class ReceivedFrame(NamedTuple):
    header: NetHeader
    frame: bytes  # the Ethernet frame, its buffers merged and the header stripped


def _align(n: int, a: int = PAGE) -> int:
    return (n + a - 1) & ~(a - 1)


@dataclass
class DriverRing:
    """The driver's view of one split ring in the front-end's memory."""

    index: int
    num: int
    desc: int  # offsets into guest memory
    avail: int
    used: int
    bufs: int  # one BUF_SIZE slot per descriptor
    kick: int = -1
    call: int = -1
    err: int = -1
    avail_idx: int = 0
    last_used: int = 0
    free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(range(self.num))


class Frontend:
    def __init__(self, path: str, queue_pairs: int = 1, ring_size: int = 256,
                 gpa_base: int = 0x1_0000_0000, uva_base: int = 0x7F00_0000_0000) -> None:
        self.path = path
        self.queue_pairs = queue_pairs
        self.ring_size = ring_size
        self.gpa_base = gpa_base
        self.uva_base = uva_base
        desc_sz, avail_sz, used_sz = _align(16 * ring_size), _align(6 + 2 * ring_size), _align(6 + 8 * ring_size)
        per_ring = desc_sz + avail_sz + used_sz + _align(ring_size * BUF_SIZE)
        self.mem_size = _align(2 * queue_pairs * per_ring + PAGE)
        self.memfd = os.memfd_create("vhea-frontend-guest", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, self.mem_size)
        self.mem = mmap.mmap(self.memfd, self.mem_size, flags=mmap.MAP_SHARED)
        # ring indices as single 16-bit stores/loads: the back-end may be another process (no torn idx)
        self.mem16 = memoryview(self.mem).cast("H")
        self.rings: list[DriverRing] = []
        off = PAGE
        for i in range(2 * queue_pairs):
            avail = off + desc_sz
            r = DriverRing(i, ring_size, off, avail, avail + avail_sz, avail + avail_sz + used_sz)
            self.rings.append(r)
            off += per_ring
        self.sock: socket.socket | None = None
        self.features = 0
        self.protocol_features = 0

    # ---- addresses -----------------------------------------------------------------------------------------

    def gpa(self, off: int) -> int:
        return self.gpa_base + off

    def uva(self, off: int) -> int:
        return self.uva_base + off

    # ---- raw messages --------------------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)

    def send(self, request: int, payload: bytes = b"", fds: list[int] | None = None,
             flags: int = FLAG_VERSION) -> None:
        assert self.sock is not None
        data = pack_message(request, payload, flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([data], anc)

    def recv_reply(self, request: int) -> bytes:
        assert self.sock is not None
        head = self._recv_exact(HEADER.size)
        req, flags, size = HEADER.unpack(head)
        if req != request or not flags & 0x4:
            raise RuntimeError(f"expected reply to {request}, got request {req} flags {flags:#x}")
        return self._recv_exact(size)

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("back-end closed the connection")
            buf += chunk
        return buf

    def call(self, request: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
        """Send a request that has no reply; with REPLY_ACK, ask for and check the ack."""
        if self.protocol_features & bit(ProtocolFeature.REPLY_ACK):
            self.send(request, payload, fds, FLAG_VERSION | FLAG_NEED_REPLY)
            ack = U64.unpack(self.recv_reply(request))[0]
            if ack != 0:
                raise RuntimeError(f"request {request} failed: ack {ack}")
        else:
            self.send(request, payload, fds)

    def get_u64(self, request: int) -> int:
        self.send(request)
        return U64.unpack(self.recv_reply(request))[0]

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True when the back-end has closed our connection."""
        assert self.sock is not None
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True

    # ---- handshake -----------------------------------------------------------------------------------------

    def memory_table(self) -> MemoryTable:
        return MemoryTable((MemoryRegion(self.gpa_base, self.mem_size, self.uva_base, 0),))

    def handshake(self, want_features: int | None = None, enable: bool = True) -> None:
        """The sequence QEMU sends for a vhost-user virtio-net device, one connection for all pairs."""
        if self.sock is None:
            self.connect()
        offered = self.get_u64(Request.GET_FEATURES)
        self.features = offered if want_features is None else offered & want_features
        if offered & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            proto = self.get_u64(Request.GET_PROTOCOL_FEATURES)
            self.send(Request.SET_PROTOCOL_FEATURES, U64.pack(proto))
            self.protocol_features = proto
            if proto & bit(ProtocolFeature.MQ):
                assert self.get_u64(Request.GET_QUEUE_NUM) >= self.queue_pairs
        self.call(Request.SET_OWNER)
        self.call(Request.SET_FEATURES, U64.pack(self.features))
        self.call(Request.SET_MEM_TABLE, self.memory_table().pack(), [self.memfd])
        for r in self.rings:
            self.setup_ring(r, enable)

    def setup_ring(self, r: DriverRing, enable: bool = True) -> None:
        self.call(Request.SET_VRING_NUM, VringState(r.index, r.num).pack())
        self.call(Request.SET_VRING_BASE, VringState(r.index, 0).pack())
        addr = VringAddr(r.index, 0, self.uva(r.desc), self.uva(r.used), self.uva(r.avail), 0)
        self.call(Request.SET_VRING_ADDR, addr.pack())
        r.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        r.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        r.err = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call(Request.SET_VRING_CALL, U64.pack(r.index), [r.call])
        self.call(Request.SET_VRING_ERR, U64.pack(r.index), [r.err])
        self.call(Request.SET_VRING_KICK, U64.pack(r.index), [r.kick])
        if enable and self.features & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            self.call(Request.SET_VRING_ENABLE, VringState(r.index, 1).pack())

    def get_vring_base(self, index: int) -> int:
        self.send(Request.GET_VRING_BASE, VringState(index, 0).pack())
        return VringState.unpack(self.recv_reply(Request.GET_VRING_BASE)).num

    # ---- ring driving --------------------------------------------------------------------------------------

    def write_desc(self, r: DriverRing, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        DESC.pack_into(self.mem, r.desc + 16 * i, addr, length, flags, nxt)

    def publish(self, r: DriverRing, head: int, kick: bool = True) -> None:
        self.mem16[(r.avail + 4 + 2 * (r.avail_idx % r.num)) // 2] = head
        r.avail_idx = (r.avail_idx + 1) & 0xFFFF
        self.mem16[(r.avail + 2) // 2] = r.avail_idx
        if kick:
            self.kick(r)

    def set_avail_idx(self, r: DriverRing, idx: int) -> None:
        self.mem16[(r.avail + 2) // 2] = idx & 0xFFFF

    def set_used_event(self, r: DriverRing, idx: int) -> None:
        self.mem16[(r.avail + 4 + 2 * r.num) // 2] = idx & 0xFFFF

    def avail_event(self, r: DriverRing) -> int:
        return self.mem16[(r.used + 4 + 8 * r.num) // 2]

    def kick(self, r: DriverRing) -> None:
        os.eventfd_write(r.kick, 1)

    def tx_ring(self, pair: int = 0) -> DriverRing:
        return self.rings[2 * pair + 1]

    def rx_ring(self, pair: int = 0) -> DriverRing:
        return self.rings[2 * pair]

    def send_frame(self, frame: bytes, pair: int = 0, kick: bool = True, split: int = 0,
                   vhdr: bytes | None = None) -> None:
        """Put one frame on a tx ring behind a virtio_net_hdr (`vhdr`, default all zero).

        `split` > 0 uses a 2-descriptor chain cut at that byte; frames bigger than a buffer (TSO frames up
        to 64 KiB) go as a chain of BUF_SIZE descriptors.
        """
        r = self.tx_ring(pair)
        self.reclaim(r)
        data = (vhdr or bytes(NET_HDR_LEN))[:NET_HDR_LEN].ljust(NET_HDR_LEN, b"\0") + frame
        if split:
            cuts = [data[:split], data[split:]]
        else:
            cuts = [data[i:i + BUF_SIZE] for i in range(0, len(data), BUF_SIZE)]
        if len(cuts) > len(r.free):
            raise BufferError("tx ring full")
        ds = [r.free.pop() for _ in cuts]
        for k, (d, piece) in enumerate(zip(ds, cuts, strict=True)):
            self.mem[r.bufs + d * BUF_SIZE: r.bufs + d * BUF_SIZE + len(piece)] = piece
            last = k == len(cuts) - 1
            self.write_desc(r, d, self.gpa(r.bufs + d * BUF_SIZE), len(piece), 0 if last else VRING_DESC_F_NEXT,
                            0 if last else ds[k + 1])
        self.publish(r, ds[0], kick)

    def used_entries(self, r: DriverRing) -> list[UsedEntry]:
        """The used elements the back-end added since the last call."""
        idx = self.mem16[(r.used + 2) // 2]
        out = []
        while r.last_used != idx:
            out.append(UsedEntry(*USED_ELEM.unpack_from(self.mem, r.used + 4 + 8 * (r.last_used % r.num))))
            r.last_used = (r.last_used + 1) & 0xFFFF
        return out

    def reclaim(self, r: DriverRing) -> int:
        """Free tx descriptors the back-end has used (walks NEXT links)."""
        n = 0
        for head, _len in self.used_entries(r):
            d = head
            while True:
                _a, _l, flags, nxt = DESC.unpack_from(self.mem, r.desc + 16 * d)
                r.free.append(d)
                n += 1
                if not flags & VRING_DESC_F_NEXT:
                    break
                d = nxt
        return n

    def post_rx(self, count: int | None = None, pair: int = 0, size: int = BUF_SIZE, kick: bool = True) -> int:
        r = self.rx_ring(pair)
        n = 0
        while r.free and (count is None or n < count):
            d = r.free.pop()
            self.write_desc(r, d, self.gpa(r.bufs + d * BUF_SIZE), size, VRING_DESC_F_WRITE)
            self.publish(r, d, kick=False)
            n += 1
        if kick and n:
            self.kick(r)
        return n

    def receive(self, pair: int = 0) -> list[bytes]:
        """Frames the back-end wrote into rx buffers (merging MRG_RXBUF buffers), header stripped."""
        return [received.frame for received in self.receive_with_header(pair)]

    def receive_with_header(self, pair: int = 0) -> list[ReceivedFrame]:
        """The virtio_net_hdr fields and the frame of each frame received."""
        r = self.rx_ring(pair)
        frames = []
        entries = self.used_entries(r)
        i = 0
        while i < len(entries):
            head, length = entries[i]
            first = self.mem[r.bufs + head * BUF_SIZE: r.bufs + head * BUF_SIZE + length]
            hdr = NetHeader(*NET_HDR.unpack_from(first))
            nbuf = max(hdr.num_buffers, 1)
            parts = [first]
            for j in range(1, nbuf):
                h, ln = entries[i + j]
                parts.append(self.mem[r.bufs + h * BUF_SIZE: r.bufs + h * BUF_SIZE + ln])
            for j in range(nbuf):
                r.free.append(entries[i + j][0])
            i += nbuf
            frames.append(ReceivedFrame(hdr, b"".join(parts)[NET_HDR_LEN:]))
        return frames

    def wait_call(self, r: DriverRing, timeout: float = 2.0) -> bool:
        """Wait for the back-end's call eventfd; True if it fired."""
        rl, _, _ = select.select([r.call], [], [], timeout)
        if not rl:
            return False
        try:
            os.eventfd_read(r.call)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for r in self.rings:
            for fd in (r.kick, r.call, r.err):
                if fd >= 0:
                    os.close(fd)
            r.kick = r.call = r.err = -1
        self.mem16.release()
        try:
            self.mem.close()
        except BufferError:
            pass
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1


def ethernet(dst: str, src: str, payload: bytes, ethertype: int = 0x88B5) -> bytes:
    """A frame with an experimental ethertype (nothing on a real network parses it)."""
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + \
        struct.pack("!H", ethertype) + payload

"""A TAP device as a switch port's peer: the host kernel (e.g. a native peer in a network namespace) on the
switch like a guest.

The device is made with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte virtio_net_hdr (TUNSETVNETHDRSZ), and
its offloads are on (TUNSETOFFLOAD: checksum, TSO4, TSO6), so checksum-offloaded and TSO frames pass whole in
both directions, as between a guest and vhea. The frame formats are pure functions (tap_header, parse_frame);
TapDevice does the I/O on a non-blocking fd: a batch of reads up to a budget, and writes that never wait.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from typing import NamedTuple

from .net import MAX_FRAME, MIN_FRAME, NET_HDR, NET_HDR_LEN, ArenaTxFrame
from .offload import (
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    OffloadError,
    OffloadRequest,
    TxFrame,
    validate,
)

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
#: what the kernel may hand us: partial checksums and whole TSO frames (v4, v6)
TAP_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
#: the same as virtio-net features: the offload requests a frame read from the tap may carry (for validate())
TAP_FEATURES = (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6)

#: Linux's IFNAMSIZ less the NUL
MAX_IFNAME = 15
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
IFNAME_RULE = f"1 to {MAX_IFNAME} characters of A-Z a-z 0-9 _ . -"
#: drop reasons of a failed write by errno
_WRITE_ERRORS = {errno.EIO: "tap_down", errno.EINVAL: "tap_rejected"}
#: all-zero header: a frame without offload requests
PLAIN_TAP_HDR = bytes(NET_HDR_LEN)
#: a read buffer that holds the biggest frame the kernel sends (64 KiB TSO) and tells a longer one apart
READ_SIZE = NET_HDR_LEN + MAX_FRAME + 1


def is_ifname(name: object) -> bool:
    return isinstance(name, str) and bool(_IFNAME.match(name)) and name not in (".", "..")


def default_ifname(port: str) -> str:
    """The device name of tap port `port` when none is given: "vh-" + the port name, cut to 15 characters."""
    return ("vh-" + port)[:MAX_IFNAME]


# ---- the frame formats (pure) ---------------------------------------------------------------------------------

def tap_header(frame: bytes) -> bytes:
    """The virtio_net_hdr that goes in front of `frame` on its way to the tap: zero for a plain frame, the
    frame's offload request for a TxFrame (GSO frames with the checksum to complete, as push_rx gives them)."""
    if not isinstance(frame, TxFrame):
        return PLAIN_TAP_HDR
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = frame.vhdr
    if gso_type:
        return NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, frame.l4, 16, 0)
    return NET_HDR.pack(flags, 0, hdr_len, 0, csum_start, csum_offset, 0)


def whole(frame: bytes) -> bytes:
    """The frame's bytes to write: an ArenaTxFrame holds only its headers (the rest is in the arena)."""
    return frame.full() if type(frame) is ArenaTxFrame else frame


class TapRead(NamedTuple):
    """A frame read from the tap (bytes, or a TxFrame with its offload request), or None and a drop reason."""

    frame: bytes | None
    drop: str | None


def parse_frame(data: bytes) -> TapRead:
    """What a read from the tap gave (virtio_net_hdr + frame) as a switch frame, or the reason to drop it.

    The kernel's offload requests are checked as a guest's are (offload.validate with TAP_FEATURES): a frame
    whose request cannot be honoured is dropped with the same reasons, never forwarded.
    """
    n = len(data) - NET_HDR_LEN
    if n < MIN_FRAME:
        return TapRead(None, "tap_runt")
    if n > MAX_FRAME:
        return TapRead(None, "tap_oversize")
    vhdr = OffloadRequest.unpack_from(data)
    if not (vhdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM or vhdr.gso_type):
        return TapRead(bytes(data[NET_HDR_LEN:]), None)  # plain (DATA_VALID or nothing): the fast path
    frame = TxFrame(data[NET_HDR_LEN:])
    frame.vhdr = vhdr
    try:
        validate(frame, TAP_FEATURES)
    except OffloadError as e:
        return TapRead(None, e.reason)
    return TapRead(frame, None)


# ---- the device ---------------------------------------------------------------------------------------------

class TapBatch(NamedTuple):
    """One pass of reads: the frames to forward, drops by reason, and whether the budget ran out first."""

    frames: list[bytes]
    drops: dict[str, int]
    more: bool


class TapDevice:
    """An open TAP device (non-blocking). It keeps working after `ip link set IFNAME netns NS`."""

    def __init__(self, ifname: str, fd: int) -> None:
        self.ifname = ifname
        self.fd = fd

    @classmethod
    def create(cls, ifname: str) -> TapDevice:
        """Create the device (DOWN, no address: whoever owns the peer moves and configures it); OSError if it
        cannot be made (no /dev/net/tun, no CAP_NET_ADMIN, the name in use by another kind of device)."""
        if not is_ifname(ifname):
            raise ValueError(f"bad interface name {ifname!r}: {IFNAME_RULE}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_LEN))
            fcntl.ioctl(fd, TUNSETOFFLOAD, TAP_OFFLOADS)
        except OSError:
            os.close(fd)
            raise
        return cls(ifname, fd)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close the fd: the kernel removes the device (in whichever namespace it is now)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_batch(self, budget: int) -> TapBatch:
        """Up to `budget` frames, fewer when the kernel has no more (EAGAIN). more=True: the budget ran out,
        frames may wait: read again at the next loop pass (a peer must not keep the loop to itself)."""
        frames: list[bytes] = []
        drops: dict[str, int] = {}
        for _ in range(budget):
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return TapBatch(frames, drops, False)
            frame, reason = parse_frame(data)
            if reason is not None:
                drops[reason] = drops.get(reason, 0) + 1
            else:
                frames.append(frame)
        return TapBatch(frames, drops, True)

    def write(self, frame: bytes) -> str | None:
        """One frame to the tap with its header; None when written, else the drop reason: tap_full when the
        kernel's queue is full (EAGAIN: never wait for it), tap_down while the device is down (EIO: the peer has
        not brought it up yet), tap_rejected when the kernel refuses the frame (EINVAL: e.g. a header length
        beyond the frame), tap_write_error otherwise."""
        try:
            os.writev(self.fd, (tap_header(frame), whole(frame)))
        except (BlockingIOError, InterruptedError):
            return "tap_full"
        except OSError as e:
            return _WRITE_ERRORS.get(e.errno, "tap_write_error")
        return None

"""Descriptor chains and indirect tables (vhea/vring.py, memory.py) as the datapath walks them: the Python
path (vhea/net.py pull_tx, _push_py) and, where it is built, the native one (vhea/_datapath.c through
vhea/datapath.py), each against the other.

Contract: whatever the guest put in its descriptor table, avail ring and indirect tables, the Python walk
raises RingError and nothing else; the native walk reports an error where the Python one raises and the same
frames, drops, ring indices and guest memory where it does not (tx), and the same outcome, error text and
memory (rx).

Input: ring size, features and indices (8 bytes), frame sizes for rx, then the guest memory image from
address 0: descriptor table at 0x000, avail ring at 0x200, used ring at 0x400, buffers and indirect tables
from 0x600 (guest-physical address = offset in the image).
"""

from __future__ import annotations

import mmap
import struct
from array import array

from vhea import native
from vhea.datapath import tx_pull
from vhea.memory import GuestMemory, MappedRegion
from vhea.net import PLAIN_HDR, VirtioNet
from vhea.offload import OFFLOAD_FEATURES, OffloadError, OffloadRequest, TxFrame, validate
from vhea.protocol import (
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    MemoryRegion,
    VringAddr,
    bit,
)
from vhea.vring import RingError

from .reader import Reader

TARGETS = ("vhea.vring", "vhea.memory", "vhea.net", "vhea.datapath")

SIZE = 0x2000
UVA = 0x7000_0000
DESC_AT, AVAIL_AT, USED_AT = 0x0, 0x200, 0x400
SIZES = (1, 2, 4, 8, 16, 32)


def _memory(image: bytes) -> tuple[GuestMemory, mmap.mmap]:
    m = mmap.mmap(-1, SIZE)
    m[:] = image
    return GuestMemory([MappedRegion(MemoryRegion(0, SIZE, UVA, 0), m, memoryview(m))]), m


def _device(mem: GuestMemory, index: int, num: int, features: int, last: int, used: int):
    dev = VirtioNet(1)
    dev.mem = mem
    dev.set_features(features)
    r = dev.rings[index]
    r.set_num(num)
    r.addr = VringAddr(index, 0, UVA + DESC_AT, UVA + USED_AT, UVA + AVAIL_AT, 0)
    r.map(mem)
    r.last_avail_idx, r.used_idx = last, used
    return dev, r


def _done(r, mem, m) -> bytes:
    image = bytes(m)
    r.unmap()
    mem.close()
    return image


def _pull_python(image, num, features, last, budget):
    mem, m = _memory(image)
    dev, r = _device(mem, 1, num, features, last, last)
    frames, drops, err = [], {}, None
    try:
        dev.pull_tx(r, frames, drops, budget)
    except RingError as e:
        err = str(e)
    out = [(bytes(f), getattr(f, "vhdr", None)) for f in frames]
    return err, out, drops, (r.last_avail_idx, r.used_idx), _done(r, mem, m)


def _pull_native(image, num, features, last, budget):
    nat = native.MOD
    mem, m = _memory(image)
    dev, r = _device(mem, 1, num, features, last, last)
    arena = bytearray(1 << 20)
    meta, runs = array("q", bytes(8 * 2 * 256)), array("q", bytes(8 * 4 * 256))
    consumed, _n, _b, runts, oversize, nruns, err = tx_pull(nat, mem.native(nat), r.view(), budget, dev.hdr_len,
                                                           arena, meta, runs)
    out, drops = [], {}
    if runts:
        drops["tx_runt"] = runts
    if oversize:
        drops["tx_oversize"] = oversize
    for k in range(nruns if err is None else 0):
        first, count, kind = runs[4 * k], runs[4 * k + 1], runs[4 * k + 2]
        for i in range(first, first + count):
            off, ln = meta[2 * i], meta[2 * i + 1]
            f = bytes(arena[off:off + ln])
            if not kind:
                out.append((f, None))
                continue
            tf = TxFrame(f)
            tf.vhdr = OffloadRequest.unpack_from(arena, off - dev.hdr_len)
            try:
                validate(tf, dev.features)
            except OffloadError as e:
                drops[e.reason] = drops.get(e.reason, 0) + 1
                continue
            out.append((f, tf.vhdr))
    state = ((last + consumed) & 0xFFFF, (last + consumed) & 0xFFFF)
    return err, out, drops, state, _done(r, mem, m)


def _push(image, num, features, last, used, frames, native_mod):
    mem, m = _memory(image)
    dev, r = _device(mem, 0, num, features, last, used)
    if native_mod is None:
        reasons, err = [], None
        for f in frames:
            try:
                reasons.append(dev._push_py(r, f, 0, 0, 0, 0, 0, 0))
            except RingError as e:
                err = str(e)
                break
        counts = (reasons.count(None), reasons.count("rx_no_buffers"), reasons.count("rx_buffer_too_small"))
    else:
        dev.native = native_mod
        meta, off = array("q"), 0
        for f in frames:
            meta.extend((off, len(f)))
            off += len(f)
        n, _nbytes, nobuf, small, err, _at = dev.rx_native(r, b"".join(frames), meta, 0, len(frames), PLAIN_HDR)
        counts = (n, nobuf, small)
    state = (r.last_avail_idx, r.used_idx, r.counters.frames, r.counters.bytes)
    return err, counts, state, _done(r, mem, m)


def one_input(data: bytes) -> None:
    rd = Reader(data)
    num = SIZES[rd.u8() % len(SIZES)]
    opts = rd.u8()
    last, used_off, budget = rd.u16(), rd.u8() % 4, 1 + rd.u8() % 64
    sizes = [14 + rd.u16() % 3000 for _ in range(1 + rd.u8() % 4)]
    image = rd.take(SIZE).ljust(SIZE, b"\0")
    features = bit(VIRTIO_RING_F_EVENT_IDX) * (opts & 1) | bit(VIRTIO_RING_F_INDIRECT_DESC) * (opts >> 1 & 1) | (
        0 if opts & 4 else bit(VIRTIO_F_VERSION_1)) | bit(VIRTIO_NET_F_MRG_RXBUF) * (opts >> 3 & 1)

    py = _pull_python(image, num, features | OFFLOAD_FEATURES, last, budget)
    if native.MOD is not None:
        c = _pull_native(image, num, features | OFFLOAD_FEATURES, last, budget)
        assert (py[0] is None) == (c[0] is None), (py[0], c[0])
        if py[0] is None:
            assert c[1:4] == py[1:4], (c[1:4], py[1:4])
        assert c[4] == py[4], "tx: guest memory differs"

    # rx: heads in range (gather reads ahead of an out-of-range head differently: tests/test_vhea_native.py)
    img = bytearray(image)
    for i in range(num):
        at = AVAIL_AT + 4 + 2 * i
        struct.pack_into("<H", img, at, struct.unpack_from("<H", img, at)[0] % num)
    frames = [bytes((i + k) & 0xFF for k in range(n)) for i, n in enumerate(sizes)]
    used = (last + used_off) & 0xFFFF
    py = _push(bytes(img), num, features, last, used, frames, None)
    if native.MOD is not None:
        c = _push(bytes(img), num, features, last, used, frames, native.MOD)
        assert (py[0] is None) == (c[0] is None), (py[0], c[0])
        if py[0] is not None:
            assert c[0] == py[0], (c[0], py[0])
        assert c[1:3] == py[1:3], (c[1:3], py[1:3])
        assert c[3] == py[3], "rx: guest memory differs"

"""The native datapath (_datapath.c) and the Python batch against the Python reference, on random rings.

Hypothesis builds descriptor tables, indirect tables and avail rings with addresses inside and outside the
mapped region, odd lengths, random flags and next indices; the same memory is walked by the Python path
(VirtioNet.pull_tx / _push_py) and by the C path, and everything must agree: whether the ring is refused,
the frames and their offload headers, the drops, the ring indices and every byte of guest memory afterwards.
"""

from __future__ import annotations

import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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
from vhea.vring import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, RingError

pytestmark = pytest.mark.skipif(native.MOD is None, reason=f"native datapath not available: {native.why_not}")

GPA = 0x10000
UVA = 0x7000_0000
SIZE = 1 << 16
DESC_AT, AVAIL_AT, USED_AT, INDIRECT_AT, BUFS_AT = 0x0, 0x1000, 0x2000, 0x3000, 0x4000


def _addr(kind: int, k: int) -> int:
    """A guest address: mostly inside the buffer area, sometimes at or past the edges of the region."""
    return [GPA + BUFS_AT + 64 * k, GPA + BUFS_AT + 64 * k + 5, GPA + SIZE - 40, GPA + SIZE + 4096, 2**64 - 16, 0,
            GPA + INDIRECT_AT][kind]


desc_st = st.tuples(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4, 5, 6]), st.integers(0, 700),
                    st.sampled_from([0, 12, 13, 26, 40, 64, 100, 2000, 5000, 16, 32, 48, 24]),
                    st.sampled_from([0, 0, 0, VRING_DESC_F_NEXT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                                     VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
                                     VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT]),
                    st.integers(0, 40))


def _tame(descs, num: int, flags_ok: tuple[int, ...]) -> list:
    """Mostly well-formed descriptors (inside the region, allowed flags, next in range), so that a good share
    of the examples forward frames; the first one keeps whatever Hypothesis drew."""
    out = [descs[0]]
    for kind, k, length, flags, nxt in descs[1:]:
        out.append((kind % 2, k, length, flags if flags in flags_ok else flags_ok[0], nxt % num))
    return out


def _pack(d) -> bytes:
    kind, k, length, flags, nxt = d
    return struct.pack("<QIHH", _addr(kind, k), length, flags, nxt)


def _memory(image: bytes) -> tuple[GuestMemory, mmap.mmap]:
    m = mmap.mmap(-1, SIZE)
    m[:] = image
    return GuestMemory([MappedRegion(MemoryRegion(GPA, SIZE, UVA, 0), m, memoryview(m))]), m


def _ring(mem: GuestMemory, index: int, num: int, dev: VirtioNet, last: int, used: int):
    r = dev.rings[index]
    r.set_num(num)
    r.addr = VringAddr(index, 0, UVA + DESC_AT, UVA + USED_AT, UVA + AVAIL_AT, 0)
    r.map(mem)
    r.last_avail_idx = r.used_idx = last
    r.used_idx = used
    return r


def _image(num: int, descs, indirect, heads, last: int, count: int, seed: int, zero_headers: bool) -> bytes:
    rnd = random.Random(seed)
    img = bytearray(rnd.randbytes(SIZE))
    if zero_headers:  # frames then mostly carry no offload request
        for off in range(BUFS_AT, SIZE, 64):
            img[off:off + 12] = bytes(12)
    for i in range(num):
        img[DESC_AT + 16 * i:DESC_AT + 16 * i + 16] = _pack(descs[i % len(descs)])
    for i, d in enumerate(indirect):
        img[INDIRECT_AT + 16 * i:INDIRECT_AT + 16 * i + 16] = _pack(d)
    struct.pack_into("<HH", img, AVAIL_AT, 0, (last + count) & 0xFFFF)
    for i in range(num):
        struct.pack_into("<H", img, AVAIL_AT + 4 + 2 * ((last + i) % num), heads[i % len(heads)])
    struct.pack_into("<H", img, AVAIL_AT + 4 + 2 * num, 0)  # used_event
    img[USED_AT:USED_AT + 6 + 8 * num] = bytes(6 + 8 * num)
    return bytes(img)


FEATURES_TX = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | \
    OFFLOAD_FEATURES


def _pull_python(image, num, last, budget, indirect_ok):
    mem, m = _memory(image)
    dev = VirtioNet(1)
    dev.mem = mem
    dev.set_features(FEATURES_TX)
    r = _ring(mem, 1, num, dev, last, last)
    r.indirect = indirect_ok
    frames, drops = [], {}
    try:
        dev.pull_tx(r, frames, drops, budget)
        err = None
    except RingError as e:
        err = str(e)
    out = [(bytes(f), getattr(f, "vhdr", None)) for f in frames]
    state = (r.last_avail_idx, r.used_idx)
    image_after = bytes(m)
    r.unmap()
    mem.close()
    return err, out, drops, state, image_after


def _pull_native(image, num, last, budget, indirect_ok):
    nat = native.MOD
    mem, m = _memory(image)
    dev = VirtioNet(1)
    dev.mem = mem
    dev.set_features(FEATURES_TX)
    r = _ring(mem, 1, num, dev, last, last)
    r.indirect = indirect_ok
    arena = bytearray(1 << 20)
    meta, runs = array("q", bytes(8 * 2 * 256)), array("q", bytes(8 * 4 * 256))
    assert (r.num, r.last_avail_idx, r.used_idx) == (num, last, last)
    consumed, nframes, _nbytes, runts, oversize, nruns, err = tx_pull(
        nat, mem.native(nat), r.view(), budget, dev.hdr_len, arena, meta, runs)
    out, drops = [], {}
    if runts:
        drops["tx_runt"] = runts
    if oversize:
        drops["tx_oversize"] = oversize
    if err is None:
        for k in range(nruns):
            first, count, kind = runs[4 * k], runs[4 * k + 1], runs[4 * k + 2]
            assert not kind or count == 1
            for i in range(first, first + count):
                off, ln = meta[2 * i], meta[2 * i + 1]
                f = bytes(arena[off:off + ln])
                if i > first:
                    assert f[:12] == bytes(arena[meta[2 * first]:meta[2 * first] + 12])  # a run shares its MACs
                if kind:
                    tf = TxFrame(f)
                    tf.vhdr = OffloadRequest.unpack_from(arena, off - dev.hdr_len)
                    try:
                        validate(tf, dev.features)
                    except OffloadError as e:
                        drops[e.reason] = drops.get(e.reason, 0) + 1
                        continue
                    out.append((f, tf.vhdr))
                else:
                    out.append((f, None))
        assert nframes == len(out) + sum(v for k, v in drops.items() if k not in ("tx_runt", "tx_oversize"))
    state = ((last + consumed) & 0xFFFF, (last + consumed) & 0xFFFF)
    image_after = bytes(m)
    r.unmap()
    mem.close()
    return err, out, drops, state, image_after


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num=st.sampled_from([4, 8, 32]), descs=st.lists(desc_st, min_size=1, max_size=32),
       indirect=st.lists(desc_st, min_size=1, max_size=8),
       heads=st.lists(st.one_of(st.integers(0, 31), st.sampled_from([0xFFFF, 33])), min_size=1, max_size=32),
       last=st.sampled_from([0, 5, 0xFFFE]), count=st.integers(0, 36), seed=st.integers(0, 2**32),
       zero_headers=st.booleans(), budget=st.sampled_from([1, 3, 256]), indirect_ok=st.booleans(),
       tame=st.booleans())
def test_tx_pull_native_matches_python(num, descs, indirect, heads, last, count, seed, zero_headers, budget,
                                       indirect_ok, tame):
    heads = [h if h >= 0xFFFF or h < num or h == 33 else h % num for h in heads]
    if tame:
        descs = _tame(descs, num, (0, VRING_DESC_F_NEXT, VRING_DESC_F_INDIRECT))
        indirect = _tame(indirect, len(indirect), (0, VRING_DESC_F_NEXT))
        heads = [h % num for h in heads]
        count = min(count, num)
        zero_headers = True
    image = _image(num, descs, indirect, heads, last, count, seed, zero_headers)
    py = _pull_python(image, num, last, budget, indirect_ok)
    c = _pull_native(image, num, last, budget, indirect_ok)
    event("refused" if py[0] else "frames" if py[1] else "drops only" if py[2] else "nothing")
    assert (py[0] is None) == (c[0] is None), (py[0], c[0])
    if py[0] is None:
        assert c[1] == py[1]
        assert c[2] == py[2]
        assert c[3] == py[3]
    assert c[4] == py[4]  # every byte of guest memory (used ring, avail_event) the same


def _push_python(image, num, last, used, frames, mrg, legacy):
    mem, m = _memory(image)
    dev = VirtioNet(1)
    dev.mem = mem
    dev.set_features(0 if legacy else bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) |
                     (bit(VIRTIO_NET_F_MRG_RXBUF) if mrg else 0))
    r = _ring(mem, 0, num, dev, last, used)
    reasons, err = [], None
    for f in frames:
        try:
            reasons.append(dev._push_py(r, f, 0, 0, 0, 0, 0, 0))
        except RingError as e:
            err = str(e)
            break
    state = (r.last_avail_idx, r.used_idx, r.counters.frames, r.counters.bytes)
    image_after = bytes(m)
    r.unmap()
    mem.close()
    delivered = sum(x is None for x in reasons)
    return err, (delivered, reasons.count("rx_no_buffers"), reasons.count("rx_buffer_too_small")), state, image_after


def _push_native(image, num, last, used, frames, mrg, legacy, batch_py=False):
    """rx_native (or, batch_py, the Python datapath's push_rx_many) over the same frames."""
    mem, m = _memory(image)
    dev = VirtioNet(1)
    dev.mem = mem
    dev.native = None if batch_py else native.MOD
    dev.set_features(0 if legacy else bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) |
                     (bit(VIRTIO_NET_F_MRG_RXBUF) if mrg else 0))
    r = _ring(mem, 0, num, dev, last, used)
    src = b"".join(frames)
    meta = array("q")
    off = 0
    for f in frames:
        meta.extend((off, len(f)))
        off += len(f)
    if batch_py:
        n, nbytes, nobuf, small, err, _at = dev.push_rx_many(r, frames, 0, len(frames))
    else:
        n, nbytes, nobuf, small, err, _at = dev.rx_native(r, src, meta, 0, len(frames), PLAIN_HDR)
    assert nbytes == r.counters.bytes
    state = (r.last_avail_idx, r.used_idx, r.counters.frames, r.counters.bytes)
    image_after = bytes(m)
    r.unmap()
    mem.close()
    return err, (n, nobuf, small), state, image_after


rx_desc_st = st.tuples(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 6]), st.integers(0, 700),
                       st.sampled_from([0, 8, 12, 40, 64, 100, 200, 1600, 2048]),
                       st.sampled_from([VRING_DESC_F_WRITE] * 6 + [0, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                                                                   VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT,
                                                                   VRING_DESC_F_INDIRECT]),
                       st.integers(0, 40))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num=st.sampled_from([4, 8, 32]), descs=st.lists(rx_desc_st, min_size=1, max_size=32),
       indirect=st.lists(rx_desc_st, min_size=1, max_size=8), heads=st.lists(st.integers(0, 31), min_size=1,
                                                                              max_size=32),
       last=st.sampled_from([0, 7, 0xFFFE]), count=st.integers(0, 34), seed=st.integers(0, 2**32),
       sizes=st.lists(st.integers(14, 3000), min_size=1, max_size=12), mrg=st.booleans(), legacy=st.booleans(),
       tame=st.booleans())
def test_rx_push_native_matches_python(num, descs, indirect, heads, last, count, seed, sizes, mrg, legacy, tame):
    heads = [h % num for h in heads]  # (out-of-range heads: test_vhea_hostile.py; gather reads ahead differently)
    if tame:
        w = VRING_DESC_F_WRITE
        descs = _tame(descs, num, (w, w | VRING_DESC_F_NEXT, VRING_DESC_F_INDIRECT))
        indirect = _tame(indirect, len(indirect), (w, w | VRING_DESC_F_NEXT))
        count = min(count, num)
    image = _image(num, descs, indirect, heads, last, count, seed, False)
    rnd = random.Random(seed + 1)
    frames = [rnd.randbytes(n) for n in sizes]
    used = (last + 3) & 0xFFFF
    py = _push_python(image, num, last, used, frames, mrg and not legacy, legacy)
    event("ring error" if py[0] else "delivered some" if py[1][0] else "none delivered")
    for batch_py in (False, True):  # the C path, and the Python datapath's batch, against frame by frame
        c = _push_native(image, num, last, used, frames, mrg and not legacy, legacy, batch_py)
        assert (py[0] is None) == (c[0] is None), (batch_py, py[0], c[0])
        if py[0] is not None:
            assert c[0] == py[0]
        assert c[1] == py[1], batch_py
        assert c[2] == py[2], batch_py
        assert c[3] == py[3], batch_py  # every byte of guest memory the same


def test_closed_memory_is_refused_not_touched():
    mem, _m = _memory(bytes(SIZE))
    nm = mem.native(native.MOD)
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        native.MOD.rx_push(nm, b"", b"", b"", 4, 0, 0, False, False, 12, b"", b"", 0, 0, bytes(12))


def test_resolve_choices(monkeypatch):
    assert native.resolve("python") == "python"
    assert native.resolve("auto") == "native"
    assert native.resolve("native") == "native"
    with pytest.raises(native.NativeError):
        native.resolve("fast")
    monkeypatch.setattr(native, "MOD", None)
    monkeypatch.setattr(native, "why_not", "no gcc")
    assert native.resolve("auto") == "python"
    with pytest.raises(native.NativeError, match="no gcc"):
        native.resolve("native")


def _import_a_copy(tmp_path, with_built: bool) -> subprocess.CompletedProcess:
    """Import vhea.native from a copy of the package, with or without the built extension (`python -S`: the editable
    install's import hook would find the extension next to the sources)."""
    src = Path(native.__file__).parent
    skip = ("__pycache__",) if with_built else ("__pycache__", "*.so")
    shutil.copytree(src, tmp_path / "vhea", ignore=shutil.ignore_patterns(*skip))
    code = "from vhea import native; print(native.MOD is not None); print(native.why_not)"
    env = {k: v for k, v in os.environ.items() if k != "VHEA_NO_NATIVE"}
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(env, PYTHONPATH=str(tmp_path)))


def test_import_loads_the_built_extension_and_compiles_nothing(tmp_path):
    before = sorted(p.name for p in (Path(native.__file__).parent).glob("*.so"))
    p = _import_a_copy(tmp_path, with_built=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["True", "None"]
    assert sorted(p.name for p in (tmp_path / "vhea").rglob("*.so")) == before  # nothing built at import


def test_import_without_the_built_extension_falls_back_and_names_the_build_command(tmp_path):
    p = _import_a_copy(tmp_path, with_built=False)
    assert p.returncode == 0, p.stderr
    loaded, why = p.stdout.splitlines()
    assert loaded == "False"
    assert why.startswith("vhea._datapath is not built; build it with `make native`"), why
    assert not list((tmp_path / "vhea").rglob("*.so"))  # nothing was compiled

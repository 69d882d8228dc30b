"""Offloads: checksum completion and TCP segmentation in the device model, and passing them on whole.

Checks use an independent checksum (a plain loop over 16-bit words), not the module's own.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vhea_helpers import (
    MAC_A,
    MAC_B,
    datapath,  # noqa: E402,F401  (the fixture)
    frontend,
    receive_n,
    running_server,
    wait_for,
)

from vhea import offload
from vhea.offload import (
    OFFLOAD_FEATURES,
    VHDR,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    OffloadError,
    OffloadRequest,
    TxFrame,
)

# The tests of the offload functions themselves run once: they call vhea.offload directly, which has no native
# variant. The tests through the device model (running_server) run on both datapaths (the datapath fixture).
THROUGH_BOTH_DATAPATHS = pytest.mark.usefixtures("datapath")


ALL = (1 << 64) - 1
GUEST_OFFLOADS = sum(1 << b for b in (VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
                                      VIRTIO_NET_F_GUEST_ECN))
NO_GUEST_OFFLOADS = ALL & ~GUEST_OFFLOADS
SRC4, DST4 = bytes([10, 10, 0, 1]), bytes([10, 10, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128


def ref_sum(data: bytes) -> int:
    """RFC 1071 folded one's complement sum, the slow obvious way."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ok(data: bytes) -> bool:
    """A checksummed region (checksum field included) verifies when it sums to 0xFFFF."""
    return ref_sum(data) == 0xFFFF


def eth(ethertype: int) -> bytes:
    return bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(MAC_A.replace(":", "")) + struct.pack("!H", ethertype)


def tcp_header(seq: int, flags: int, options: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 12345, doff << 4, flags, 65535, 0, 0) + options


def pseudo_sum(src: bytes, dst: bytes, length: int) -> int:
    return ref_sum(src + dst + struct.pack("!HH", 6, length) if len(src) == 4
                   else src + dst + struct.pack("!IxxxB", length, 6))


def tso_frame(payload: bytes, v6: bool = False, flags: int = ACK | PSH | FIN | CWR, seq: int = 0xFFFFF000,
              ip_id: int = 0xFFF0, options: bytes = b"\x01\x01\x08\x0a" + bytes(8)) -> bytes:
    """A frame as a Linux guest hands it over with TSO: one big TCP segment, checksum field = pseudo sum."""
    th = bytearray(tcp_header(seq, flags, options))
    tcp_len = len(th) + len(payload)
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, tcp_len, 6, 64) + SRC6 + DST6
        struct.pack_into("!H", th, 16, pseudo_sum(SRC6, DST6, tcp_len))
        return eth(0x86DD) + ip + bytes(th) + payload
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, ip_id, 0x4000, 64, 6, 0) + SRC4 + DST4)
    struct.pack_into("!H", ip, 10, 0xFFFF - ref_sum(bytes(ip)))
    struct.pack_into("!H", th, 16, pseudo_sum(SRC4, DST4, tcp_len))
    return eth(0x0800) + bytes(ip) + bytes(th) + payload


def gso_hdr(gso_type: int, mss: int, l4: int = 34, flags: int = VIRTIO_NET_HDR_F_NEEDS_CSUM,
            hdr_len: int = 66) -> bytes:
    return VHDR.pack(flags, gso_type, hdr_len, mss, l4, 16) + b"\0\0"


def txframe(frame: bytes, vhdr: bytes, features: int = ALL) -> TxFrame:
    f = TxFrame(frame)
    f.vhdr = OffloadRequest.unpack_from(vhdr)
    offload.validate(f, features)
    return f


def check_segments(segs: list[bytes], original: bytes, mss: int, v6: bool, complete: bool = True) -> None:
    """Every segment's IP and TCP header is right and the payloads reassemble to the original."""
    l3 = 14
    l4 = l3 + (40 if v6 else 20)
    thl = (original[l4 + 12] >> 4) * 4
    payload = original[l4 + thl:]
    seq0 = struct.unpack_from("!I", original, l4 + 4)[0]
    flags0 = original[l4 + 13]
    id0 = struct.unpack_from("!H", original, l3 + 4)[0]
    assert len(segs) == max(1, -(-len(payload) // mss))
    got = b""
    for i, s in enumerate(segs):
        last = i == len(segs) - 1
        data = s[l4 + thl:]
        assert len(data) == (len(payload) - mss * i if last else mss)
        assert s[:l3] == original[:l3]
        if v6:
            assert struct.unpack_from("!H", s, l3 + 4)[0] == thl + len(data)
            assert s[l3 + 8:l4] == original[l3 + 8:l4]
            src, dst = SRC6, DST6
        else:
            tot, ip_id = struct.unpack_from("!HH", s, l3 + 2)
            assert tot == 20 + thl + len(data) == len(s) - l3
            assert ip_id == (id0 + i) & 0xFFFF
            assert ok(s[l3:l4]), f"IPv4 header checksum of segment {i}"
            src, dst = SRC4, DST4
        assert struct.unpack_from("!I", s, l4 + 4)[0] == (seq0 + i * mss) & 0xFFFFFFFF
        f = s[l4 + 13]
        want = flags0
        if not last:
            want &= ~(FIN | PSH)
        if i:
            want &= ~CWR
        assert f == want, f"segment {i} flags {f:#x} want {want:#x}"
        assert s[l4 + 14:l4 + 16] == original[l4 + 14:l4 + 16]  # window
        assert s[l4 + 20:l4 + thl] == original[l4 + 20:l4 + thl]  # options
        tcp = s[l4:]
        if complete:
            assert ok(bytes(ps := pseudo_hdr(src, dst, len(tcp))) + tcp), f"TCP checksum of segment {i} ({ps!r})"
        else:  # partial: the field holds the pseudo-header sum, so summing from l4 must complete it
            assert struct.unpack_from("!H", s, l4 + 16)[0] % 0xFFFF == pseudo_sum(src, dst, len(tcp)) % 0xFFFF
        got += data
    assert got == payload


def pseudo_hdr(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!xBH", 6, length)
    return src + dst + struct.pack("!IxxxB", length, 6)


# ---- checksum primitive --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 19, 20, 255, 256, 257, 1448, 1449, 65535])
def test_csum_sum_matches_rfc1071(n):
    data = os.urandom(n)
    assert offload.csum_sum(data) % 0xFFFF == ref_sum(data) % 0xFFFF
    if n:
        assert offload.csum_sum(b"\xff" * n) % 0xFFFF == ref_sum(b"\xff" * n) % 0xFFFF


def test_csum_without_numpy_matches(monkeypatch):
    data = os.urandom(3001)
    fast = offload.csum_sum(data)
    monkeypatch.setattr(offload, "_np", None)
    assert offload.csum_sum(data) == fast
    assert offload.csum_segments(data, 1000, 4) == [offload.csum_sum(data[i:i + 1000]) for i in range(0, 3001, 1000)]


# ---- segmentation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size, mss", [(65535 - 20 - 32 - 20, 1448), (1448 * 3, 1448), (100, 1448), (5001, 1000),
                                       (4000, 1001)])
def test_segment_tcp_complete_checksums(v6, size, mss):
    original = tso_frame(os.urandom(size), v6=v6)
    gso = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
    f = txframe(original, gso_hdr(gso, mss, l4=54 if v6 else 34))
    segs = offload.segment_tcp(f, partial=False)
    check_segments(segs, original, mss, v6)


@pytest.mark.parametrize("v6", [False, True])
def test_segment_tcp_partial_checksums(v6):
    original = tso_frame(os.urandom(10000), v6=v6)
    gso = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
    segs = offload.segment_tcp(txframe(original, gso_hdr(gso, 1448, l4=54 if v6 else 34)), partial=True)
    check_segments(segs, original, 1448, v6, complete=False)


def test_gso_size_bigger_than_the_payload_is_one_segment():
    original = tso_frame(os.urandom(3000))
    segs = offload.segment_tcp(txframe(original, gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 65535)), partial=False)
    check_segments(segs, original, 65535, False)


def test_segment_flags_single_segment_keeps_all():
    original = tso_frame(b"x" * 100, flags=ACK | PSH | FIN | CWR)
    segs = offload.segment_tcp(txframe(original, gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448)), partial=False)
    assert len(segs) == 1 and segs[0][34 + 13] == ACK | PSH | FIN | CWR


def test_segment_vlan_tagged():
    plain = tso_frame(os.urandom(3000))
    tagged = plain[:12] + b"\x81\x00\x00\x05" + plain[12:]
    segs = offload.segment_tcp(txframe(tagged, gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1000, l4=38)), partial=False)
    assert len(segs) == 3
    check_segments([s[:12] + s[16:] for s in segs], plain, 1000, False)


def test_complete_csum_udp():
    payload = os.urandom(333)
    udp = bytearray(struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload)
    ps = ref_sum(SRC4 + DST4 + struct.pack("!xBH", 17, len(udp)))
    struct.pack_into("!H", udp, 6, ps)
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0) + SRC4 + DST4)
    frame = eth(0x0800) + bytes(ip) + bytes(udp)
    out = offload.complete_csum(frame, 34, 6)
    assert ok(SRC4 + DST4 + struct.pack("!xBH", 17, len(udp)) + out[34:])
    assert out[:40] == frame[:40] and out[42:] == frame[42:]


# ---- hostile headers -----------------------------------------------------------------------------------------

BAD = [
    ("gso_size_zero", tso_frame(b"x" * 3000), gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 0), "tx_gso_bad_size"),
    ("gso_size_tiny", tso_frame(b"x" * 60000), gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1), "tx_gso_bad_size"),
    ("gso_size_huge", tso_frame(b"x" * 60000), gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 30000), "tx_gso_bad_size"),
    ("csum_start_outside", tso_frame(b"x" * 100), VHDR.pack(1, 0, 0, 0, 5000, 16) + b"\0\0", "tx_csum_bad_offset"),
    ("csum_offset_outside", tso_frame(b"x" * 100), VHDR.pack(1, 0, 0, 0, 34, 65535) + b"\0\0",
     "tx_csum_bad_offset"),
    ("csum_field_past_end", tso_frame(b""), VHDR.pack(1, 0, 0, 0, 34 + 31, 1) + b"\0\0", "tx_csum_bad_offset"),
    ("truncated_tcp", tso_frame(b"")[:34 + 10], gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448, flags=0),
     "tx_offload_truncated"),
    ("truncated_tcp_options", tso_frame(b"")[:34 + 24], gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448, flags=0),
     "tx_offload_truncated"),
    ("truncated_ip", tso_frame(b"")[:20], gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448, flags=0), "tx_offload_truncated"),
    ("v4_type_on_v6", tso_frame(b"x" * 3000, v6=True), gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448, l4=54),
     "tx_gso_bad_type"),
    ("udp_gso", tso_frame(b"x" * 3000), gso_hdr(VIRTIO_NET_HDR_GSO_UDP, 1448), "tx_gso_bad_type"),
    ("unknown_gso", tso_frame(b"x" * 3000), gso_hdr(7, 1448), "tx_gso_bad_type"),
    ("ecn_alone", tso_frame(b"x" * 3000), gso_hdr(VIRTIO_NET_HDR_GSO_ECN, 1448), "tx_gso_bad_type"),
    ("not_ip", eth(0x88B5) + bytes(3000), gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448), "tx_offload_not_ip"),
    ("ip_header_length", tso_frame(b"x" * 3000)[:14] + b"\x43" + tso_frame(b"x" * 3000)[15:],
     gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448), "tx_offload_bad_ip"),
]


@pytest.mark.parametrize("name, frame, vhdr, reason", BAD, ids=[b[0] for b in BAD])
def test_hostile_offload_request_is_a_reasoned_error(name, frame, vhdr, reason):
    f = TxFrame(frame)
    f.vhdr = OffloadRequest.unpack_from(vhdr)
    with pytest.raises(OffloadError) as e:
        offload.validate(f, ALL)
    assert e.value.reason == reason


def test_offload_not_negotiated_is_refused():
    f = TxFrame(tso_frame(b"x" * 3000))
    f.vhdr = OffloadRequest.unpack_from(gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448))
    with pytest.raises(OffloadError) as e:
        offload.validate(f, 1 << VIRTIO_NET_F_CSUM)
    assert e.value.reason == "tx_gso_not_negotiated"
    with pytest.raises(OffloadError) as e:
        offload.validate(f, 0)
    assert e.value.reason == "tx_csum_not_negotiated"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hdr=st.tuples(st.integers(0, 255), st.sampled_from([0, 1, 3, 4, 0x81, 0x84, 0x80, 0xFF]),
                     st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
       body=st.binary(min_size=0, max_size=200), cut=st.integers(0, 200), v6=st.booleans())
def test_fuzz_offload_never_raises_anything_else(hdr, body, cut, v6):
    frame = (tso_frame(body, v6=v6) + body)[:14 + cut] if cut < 150 else tso_frame(body, v6=v6)
    f = TxFrame(frame)
    f.vhdr = OffloadRequest._make(hdr)
    try:
        offload.validate(f, ALL)
    except OffloadError:
        return
    for partial in (False, True):
        if hdr[1]:
            for s in offload.segment_tcp(f, partial):
                assert len(s) <= len(frame)
        elif hdr[0] & 1:
            assert len(offload.complete_csum(f, hdr[4], hdr[5])) == len(frame)


# ---- through the device model --------------------------------------------------------------------------------

def _received(fe, n_frames_hint, timeout=5.0):
    got = []
    wait_for(lambda: bool(got.extend(fe.receive_with_header())) or len(got) >= n_frames_hint, timeout)
    return got


@THROUGH_BOTH_DATAPATHS
@pytest.mark.parametrize("v6", [False, True])
def test_tso_frame_is_segmented_for_a_peer_without_offloads(sockdir, v6):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=NO_GUEST_OFFLOADS)
        assert a.features & OFFLOAD_FEATURES == OFFLOAD_FEATURES
        b.post_rx()
        original = tso_frame(os.urandom(60000), v6=v6)
        gso = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
        a.send_frame(original, vhdr=gso_hdr(gso, 1448, l4=54 if v6 else 34))
        got = _received(b, 42)
        assert all(h[:6] == (0, 0, 0, 0, 0, 0) for h, _ in got)  # checksums complete, nothing left to do
        check_segments([f for _, f in got], original, 1448, v6)
        st = server.stats()["ports"]
        assert st["a"]["from_guest_frames"] == 1 and st["a"]["drops"] == {}
        assert st["b"]["queues"][0]["frames"] == len(got) == 42  # the queue counts what it wrote


@THROUGH_BOTH_DATAPATHS
def test_tso_frame_is_segmented_with_partial_csum_for_a_csum_peer(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=ALL & ~(1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6))
        b.post_rx()
        original = tso_frame(os.urandom(5000))
        a.send_frame(original, vhdr=gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448))
        got = _received(b, 4)
        assert [h[:6] for h, _ in got] == [(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16)] * 4
        check_segments([f for _, f in got], original, 1448, False, complete=False)


@THROUGH_BOTH_DATAPATHS
@pytest.mark.parametrize("v6", [False, True])
def test_tso_frame_goes_whole_to_a_tso_peer(sockdir, v6):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake()
        b.post_rx()
        original = tso_frame(os.urandom(65000 - 66), v6=v6)
        gso = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
        l4 = 54 if v6 else 34
        a.send_frame(original, vhdr=gso_hdr(gso, 1448, l4=l4, hdr_len=l4 + 32))
        (hdr, f), = _received(b, 1)
        assert f == original
        flags, gso_type, hdr_len, gso_size, cs, co, nbuf = hdr
        assert (flags, gso_type, hdr_len, gso_size, cs, co) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, l4 + 32, 1448,
                                                                l4, 16)
        assert nbuf == -(-(len(original) + 12) // 2048)  # spread over MRG_RXBUF buffers, counted right


@THROUGH_BOTH_DATAPATHS
def test_ecn_gso_frame_needs_guest_ecn(sockdir):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=ALL & ~(1 << VIRTIO_NET_F_GUEST_ECN))
        b.post_rx()
        original = tso_frame(os.urandom(3000))
        a.send_frame(original, vhdr=gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 1448))
        got = _received(b, 3)
        assert len(got) == 3  # segmented: b could not take an ECN GSO frame whole
        check_segments([f for _, f in got], original, 1448, False, complete=False)


@THROUGH_BOTH_DATAPATHS
def test_partial_csum_completed_or_passed_on(sockdir):
    with running_server(sockdir, ["a", "b", "c"]) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b, frontend(server, "c") as c:
        a.handshake()
        b.handshake(want_features=NO_GUEST_OFFLOADS)
        c.handshake()
        b.post_rx()
        c.post_rx()
        original = tso_frame(os.urandom(700), flags=ACK | PSH)
        a.send_frame(original, vhdr=VHDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16) + b"\0\0")
        (hb, fb), = _received(b, 1)  # flooded to b and c (unknown MAC)
        (hc, fc), = _received(c, 1)
        assert hb[0] == 0 and ok(pseudo_hdr(SRC4, DST4, len(fb) - 34) + fb[34:]) and fb[:50] == original[:50]
        assert hc[:6] == (VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16) and fc == original


@THROUGH_BOTH_DATAPATHS
@pytest.mark.parametrize("name, frame, vhdr, reason", BAD, ids=[b[0] for b in BAD])
def test_hostile_offload_is_a_counted_drop_and_traffic_goes_on(sockdir, name, frame, vhdr, reason):
    with running_server(sockdir, ["a", "b"]) as server, frontend(server, "a") as a, frontend(server, "b") as b:
        a.handshake()
        b.handshake(want_features=NO_GUEST_OFFLOADS)
        b.post_rx()
        a.send_frame(frame, vhdr=vhdr)
        good = tso_frame(b"after")
        a.send_frame(good)
        assert receive_n(b, 1) == [good]
        st = server.stats()["ports"]["a"]
        assert st["drops"] == {reason: 1}
        assert st["from_guest_frames"] == 1
        assert server.ports["a"].handler.device.rings[1].error is None


@THROUGH_BOTH_DATAPATHS
@pytest.mark.parametrize("queue_pairs", [1, 2])
def test_flooded_tso_frame_whole_to_one_peer_and_segmented_for_another(sockdir, queue_pairs):
    """One TSO frame to an unknown MAC, flooded: b (TSO) gets it whole, c (no offloads) gets checked segments, and
    the counters count the frame once per port (the native datapath keeps it in its arena for both)."""
    with running_server(sockdir, ["a", "b", "c"], queue_pairs=queue_pairs) as server, frontend(server, "a") as a, \
            frontend(server, "b") as b, frontend(server, "c") as c:
        a.handshake()
        b.handshake()
        c.handshake(want_features=NO_GUEST_OFFLOADS)
        b.post_rx()
        c.post_rx()
        original = tso_frame(os.urandom(20000))
        a.send_frame(original, vhdr=gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448, hdr_len=66))
        (_hdr, whole), = _received(b, 1)
        assert whole == original
        got = _received(c, 14)
        check_segments([f for _, f in got], original, 1448, False)
        st = server.stats()["ports"]
        assert st["a"]["from_guest_frames"] == 1 and st["a"]["from_guest_bytes"] == len(original)
        assert (st["b"]["to_guest_frames"], st["b"]["to_guest_bytes"]) == (1, len(original))
        assert (st["c"]["to_guest_frames"], st["c"]["to_guest_bytes"]) == (1, len(original))
        assert not st["b"]["drops"] and not st["c"]["drops"]

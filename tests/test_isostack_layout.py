"""Sans-I/O parts of IsoStack: geometry, command validation, ring arithmetic, addresses, NIC placement."""

import errno
import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isostack import placement
from isostack.layout import (
    BODY,
    ENTRY,
    BadEntry,
    Geometry,
    LayoutError,
    Op,
    check_ring,
    decode_addr,
    decode_command,
    encode_addr,
    ring_spans,
)

G = Geometry(max_sockets=8)


def entry(op, sock=3, pos=5, a=0, b=0, c=0, ip=b"", flags=0, seq=6):
    return ENTRY.pack(seq, pos, op, flags, sock, a, b, c, ip)


def test_geometry_offsets_are_page_aligned_and_disjoint():
    g = Geometry(max_sockets=3, cmdq_slots=16, tx_size=8192, rx_size=16384, notif_slots=64).check()
    spans = []
    for i in range(3):
        spans += [(g.control_off(i), 4096), (g.cmdq_off(i), g.cmdq_bytes), (g.tx_off(i), 8192), (g.rx_off(i), 16384)]
    spans.sort()
    for (a, la), (b, _) in zip(spans, spans[1:], strict=False):
        assert a % 4096 == 0 and a + la <= b
    assert spans[-1][0] + spans[-1][1] == g.total_size


@pytest.mark.parametrize(
    "kw", [dict(max_sockets=0), dict(cmdq_slots=3), dict(tx_size=1000), dict(rx_size=1 << 30), dict(notif_slots=1)]
)
def test_geometry_rejects_bad_sizes(kw):
    with pytest.raises(LayoutError):
        Geometry(**kw).check()


def test_geometry_from_dict_rejects_garbage():
    with pytest.raises(LayoutError):
        Geometry.from_dict({"max_sockets": "x"})
    assert Geometry.from_dict(G.resolved().to_dict()) == G.resolved()
    with pytest.raises(LayoutError):  # the front-end resolves "one ring per CPU" before it attaches
        Geometry.from_dict(G.to_dict())


def test_notification_rings_have_their_own_headers_and_entries():
    g = Geometry(max_sockets=2, notif_slots=256, notif_rings=3).check()
    assert G.resolved().notif_rings == min(64, os.cpu_count())
    words = [g.ring_word(r) for r in range(3)]
    assert words == [4096 // 8, 4096 // 8 + 16, 4096 // 8 + 32]  # 128 bytes each, after the app header
    offs = [g.ring_off(r) for r in range(3)]
    assert offs[0] >= 4096 + 3 * 128 and offs[1] - offs[0] == offs[2] - offs[1] == 256 * 16
    assert g.sock_base == offs[2] + 4096 and g.notif_off == offs[0]
    with pytest.raises(LayoutError):
        Geometry(notif_rings=65).check()


def test_decode_valid_command():
    port, ip = encode_addr(socket.AF_INET, ("127.0.0.1", 80))
    cmd = decode_command(entry(Op.CONNECT, a=socket.AF_INET, b=port, ip=ip), 5, 3, G)
    assert (cmd.op, cmd.pos, cmd.sock, cmd.b) == (Op.CONNECT, 5, 3, 80)
    assert decode_addr(cmd.a, cmd.b, cmd.ip) == ("127.0.0.1", 80)


@pytest.mark.parametrize(
    "raw,err",
    [
        (entry(99), errno.EPROTO),  # unknown opcode
        (entry(Op.LISTEN, sock=4), errno.EBADF),  # names another socket
        (entry(Op.LISTEN, pos=7), errno.EPROTO),  # wrong sequence
        (entry(Op.LISTEN, flags=1), errno.EINVAL),
        (entry(Op.SOCKET, a=socket.AF_UNIX, b=socket.SOCK_STREAM), errno.EAFNOSUPPORT),
        (entry(Op.CONNECT, a=socket.AF_INET, b=70000), errno.EINVAL),
        (entry(Op.ACCEPT, a=8), errno.EBADF),  # out of range
        (entry(Op.ACCEPT, a=3), errno.EBADF),  # itself
        (entry(Op.SHUTDOWN, a=7), errno.EINVAL),
        (entry(Op.SETSOCKOPT, a=socket.SOL_SOCKET, b=socket.SO_BINDTODEVICE), errno.ENOPROTOOPT),
    ],
)
def test_decode_rejects_hostile_entries(raw, err):
    with pytest.raises(BadEntry) as e:
        decode_command(raw, 5, 3, G)
    assert e.value.err == err


@given(st.binary(min_size=64, max_size=64), st.integers(0, 2**64 - 1), st.integers(0, 7))
def test_decode_any_bytes_gives_command_or_bad_entry(raw, pos, sock):
    try:
        cmd = decode_command(raw, pos, sock, G)
    except BadEntry as e:
        assert e.err > 0
    else:
        assert cmd.pos == pos and cmd.sock == sock


def test_check_ring():
    assert check_ring(10, 20, 16, "tx") == 10
    with pytest.raises(BadEntry):
        check_ring(10, 27, 16, "tx")
    with pytest.raises(BadEntry):
        check_ring(10, 9, 16, "tx")


@given(st.integers(0, 2**40), st.integers(0, 64))
def test_ring_spans_cover_length_within_ring(index, length):
    spans = ring_spans(index, length, 64)
    assert sum(n for _, n in spans) == length
    assert spans[0][0] == index % 64
    assert all(0 <= o and o + n <= 64 for o, n in spans)


def test_addresses_v6_and_bad_port():
    port, ip = encode_addr(socket.AF_INET6, ("::1", 9))
    assert decode_addr(socket.AF_INET6, port, ip)[:2] == ("::1", 9)
    with pytest.raises(OverflowError):
        encode_addr(socket.AF_INET, ("127.0.0.1", 65536))


def test_body_layout_matches_entry():
    assert ENTRY.unpack(struct.pack("<QQ", 1, 2) + BODY.pack(3, 0, 4, 5, 6, 7, b"x"))[:6] == (1, 2, 3, 0, 4, 5)


# ---------------------------------------------------------------- placement


def test_cpu_lists_and_masks():
    assert placement.parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    assert placement.format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert placement.cpu_mask({1}) == "00000002"
    assert placement.cpu_mask({33}) == "00000002,00000000"


def test_place_on_fake_tree(tmp_path):
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    dev = sysfs / "devices/pci0000:00/0000:00:03.0/virtio1"
    (dev / "driver").mkdir(parents=True)
    drv = sysfs / "bus/virtio/drivers/virtio_net"
    drv.mkdir(parents=True)
    (dev / "driver").rmdir()
    (dev / "driver").symlink_to(drv)
    iface = sysfs / "class/net/eth1"
    for q in ("rx-0", "rx-1", "tx-0", "tx-1"):
        (iface / "queues" / q).mkdir(parents=True)
    (iface / "device").symlink_to(dev)
    (sysfs / "class/net/lo").mkdir()
    proc.mkdir()
    (proc / "interrupts").write_text(
        "           CPU0       CPU1\n"
        " 24:          0          0   PCI-MSI 49152-edge      virtio1-config\n"
        " 25:         10          0   PCI-MSI 49153-edge      virtio1-input.0\n"
        " 26:          5          0   PCI-MSI 49154-edge      virtio1-output.0\n"
        " 27:          5          0   PCI-MSI 49155-edge      virtio0-input.0\n"
    )
    for irq in (25, 26):
        (proc / "irq" / str(irq)).mkdir(parents=True)
    lines = placement.place(1, None, str(proc), str(sysfs))
    assert (proc / "irq/25/smp_affinity_list").read_text() == "1\n"
    assert (proc / "irq/26/smp_affinity_list").read_text() == "1\n"
    assert not (proc / "irq/27").exists()
    assert (iface / "queues/rx-1/rps_cpus").read_text() == "00000002\n"
    assert (iface / "queues/tx-0/xps_cpus").read_text() == "00000002\n"
    assert len(lines) == 6
    assert placement.place(1, ["eth9"], str(proc), str(sysfs))[0].startswith("eth9: not a virtio-net")

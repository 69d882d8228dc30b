"""Write the seed corpora (fuzz/corpus/NAME/seed-*): real messages, frames, rings and playbooks, built with the
project's own serializers. `python -m fuzz.make_seeds` rewrites them (they are committed; run it when a
format changes). The regress-* files beside them are inputs that found a bug, kept so every run retries them.
"""

from __future__ import annotations

import json
import struct

from isostack.attach import Hello
from isostack.layout import ENTRY, Geometry, Op, encode_body, encode_listen_group
from vhea.protocol import (
    FLAG_NEED_REPLY,
    FLAG_VERSION,
    U64,
    MemoryRegion,
    MemoryTable,
    ProtocolFeature,
    Request,
    VringAddr,
    VringState,
    bit,
    pack_message,
)

from .engine import CORPUS, ROOT

MAC = bytes.fromhex("020000000001020000000002")


def ipv4_tcp(payload: bytes, flags: int = 0x18, vlan: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return MAC + tag + b"\x08\x00" + ip + tcp + payload


def ipv6_udp(payload: bytes, ext: bool = False) -> bytes:
    udp = struct.pack("!HHHH", 5000, 53, 8 + len(payload), 0)
    hop = bytes([17, 0, 0, 0, 0, 0, 0, 0]) if ext else b""
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(hop) + len(udp) + len(payload), 0 if ext else 17, 64,
                     bytes(15) + b"\x01", bytes(15) + b"\x02")
    return MAC + b"\x86\xdd" + ip + hop + udp + payload


def ipv6_tcp(payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64, bytes(15) + b"\x01", bytes(15) + b"\x02")
    return MAC + b"\x86\xdd" + ip + tcp + payload


# ---- vhost-user ------------------------------------------------------------------------------------------------

def vhost_handshake(pairs: int, split: int | None = None) -> bytes:
    """A QEMU-like session: features, owner, memory table (one memfd), ring 0 and 1 configured and started."""
    uva = 0x7000_0000
    msgs: list[tuple[bytes, int]] = [  # (message, fd spec: count | 4 for memfds)
        (pack_message(Request.GET_FEATURES), 0),
        (pack_message(Request.SET_OWNER), 0),
        (pack_message(Request.GET_PROTOCOL_FEATURES), 0),
        (pack_message(Request.SET_PROTOCOL_FEATURES, U64.pack(bit(ProtocolFeature.REPLY_ACK))), 0),
        (pack_message(Request.GET_QUEUE_NUM), 0),
        (pack_message(Request.SET_FEATURES, U64.pack((1 << 32) | (1 << 30) | (1 << 29) | (1 << 28) | (1 << 15))), 0),
        (pack_message(Request.SET_MEM_TABLE, MemoryTable((MemoryRegion(0, 1 << 16, uva, 0),)).pack(),
                      FLAG_VERSION | FLAG_NEED_REPLY), 4 | 1),
    ]
    for ring in range(2):
        msgs += [
            (pack_message(Request.SET_VRING_NUM, VringState(ring, 8).pack()), 0),
            (pack_message(Request.SET_VRING_BASE, VringState(ring, 0).pack()), 0),
            (pack_message(Request.SET_VRING_ADDR, VringAddr(ring, 0, uva + 0x1000 * (2 * ring + 1),
                                                            uva + 0x1000 * (2 * ring + 2) + 0x800,
                                                            uva + 0x1000 * (2 * ring + 2), 0).pack()), 0),
            (pack_message(Request.SET_VRING_KICK, U64.pack(ring)), 1),
            (pack_message(Request.SET_VRING_CALL, U64.pack(ring)), 1),
            (pack_message(Request.SET_VRING_ENABLE, VringState(ring, 1).pack()), 0),
        ]
    msgs += [(pack_message(Request.GET_VRING_BASE, VringState(1, 0).pack()), 0),
             (pack_message(Request.RESET_OWNER), 0)]
    if split is not None:  # the first message in two reads
        first = msgs[0][0]
        msgs[0:1] = [(first[:split], 0), (first[split:], 0)]
    plan = bytes([(pairs - 1) & 1, len(msgs[:32])])
    plan += b"".join(struct.pack("<HB", len(m), spec) for m, spec in msgs[:32])
    return plan + b"".join(m for m, _ in msgs)


# ---- rings -----------------------------------------------------------------------------------------------------

def ring_image(descs: list[tuple[int, int, int, int]], heads: list[int], indirect: list[tuple] = (),
               buffers: dict[int, bytes] | None = None) -> bytes:
    img = bytearray(0x1000)
    for i, d in enumerate(descs):
        struct.pack_into("<QIHH", img, 16 * i, *d)
    struct.pack_into("<HH", img, 0x200, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", img, 0x204 + 2 * i, h)
    for i, d in enumerate(indirect):
        struct.pack_into("<QIHH", img, 0x800 + 16 * i, *d)
    for at, data in (buffers or {}).items():
        img[at:at + len(data)] = data
    return bytes(img)


def vring_seeds() -> list[bytes]:
    frame = bytes(12) + ipv4_tcp(b"x" * 40)
    head = lambda num, opts: bytes([{1: 0, 2: 1, 4: 2, 8: 3, 16: 4, 32: 5}[num], opts, 0, 0, 0, 8, 0]) + \
        struct.pack("<H", 100)  # noqa: E731
    return [
        head(8, 0x3) + ring_image([(0x600, len(frame), 0, 0)], [0], buffers={0x600: frame}),
        head(8, 0x3) + ring_image([(0x600, 12, 1, 1), (0x60C, len(frame) - 12, 0, 0)], [0],
                                  buffers={0x600: frame}),
        head(8, 0x3) + ring_image([(0x800, 32, 4, 0)], [0], buffers={0x600: frame},
                                  indirect=[(0x600, 12, 1, 1), (0x60C, len(frame) - 12, 0, 0)]),
        head(4, 0x9) + ring_image([(0x600, 1600, 2, 0), (0xC00, 1600, 2, 0)], [0, 1]),
        head(4, 0x3) + ring_image([(0x600, 12, 3, 1), (0x700, 2000, 2, 0)], [0, 1]),
        head(32, 0x7) + ring_image([(0x600 + 64 * i, 64, 2 * (i % 2), 0) for i in range(32)], list(range(32))),
    ]


# ---- offloads and frames ---------------------------------------------------------------------------------------

def offload_seeds() -> list[bytes]:
    tso4 = (1 << 0) | (1 << 11) | (1 << 12) | (1 << 13)
    rx = struct.pack("<H", ((1 << 1) | (1 << 7) | (1 << 8)) >> 1)
    big = ipv4_tcp(bytes(range(256)) * 12)
    return [
        struct.pack("<I", tso4) + rx + struct.pack("<BBHHHH", 1, 1, 54, 1000, 34, 16) + big,
        struct.pack("<I", tso4) + b"\0\0" + struct.pack("<BBHHHH", 1, 1, 58, 500, 38, 16) + ipv4_tcp(b"y" * 1400, 0x19,
                                                                                                    vlan=True),
        struct.pack("<I", tso4) + rx + struct.pack("<BBHHHH", 1, 4, 74, 1200, 54, 16) + ipv6_tcp(b"z" * 3000),
        struct.pack("<I", tso4) + b"\0\0" + struct.pack("<BBHHHH", 1, 0, 0, 0, 54, 6) + ipv6_udp(b"q" * 100),
        struct.pack("<I", tso4) + rx + struct.pack("<BBHHHH", 0, 0x81, 54, 1000, 34, 16) + ipv4_tcp(b"e" * 2000, 0x98),
    ]


def classifier_seeds() -> list[bytes]:
    arp = MAC + b"\x08\x06" + bytes(28)
    frag = bytearray(ipv4_tcp(b"f" * 20))
    frag[20] = 0x20
    return [bytes([0x81, 0]) + ipv4_tcp(b"a" * 10), bytes([0xFF, 0]) + ipv4_tcp(b"b", vlan=True),
            bytes([0x83, 0x04]) + ipv6_udp(b"c" * 8, ext=True), bytes([0x82, 0]) + bytes(frag),
            bytes([0, 0]) + arp, bytes([0x82, 0x01, 1, 2, 3]) + ipv6_udp(b"d")]


# ---- isostackd -------------------------------------------------------------------------------------------------

def attach_seeds() -> list[bytes]:
    g = Geometry(max_sockets=4, tx_size=4096, rx_size=4096, notif_rings=1)
    return [bytes([4]) + Hello(g, 1234, "isoperf").encode(),
            bytes([2]) + json.dumps({"type": "watch", "sock": 3}).encode(),
            bytes([0]) + json.dumps({"type": "unwatch", "sock": 0}).encode(),
            bytes([0]) + json.dumps({"type": "attached", "app": 1, "cpu": 1, "pid": 9, "locks": False,
                                     "instance": 0, "queues": None}).encode(),
            bytes([0]) + json.dumps({"type": "error", "message": "no"}).encode(),
            bytes([5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), bytes([7, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5])]


def commands_seeds() -> list[bytes]:
    out = []
    b, c, ip = encode_listen_group([1, 2, 3], {0: 0, 1: 1, 2: 2, 3: 0})
    for pos, (op, a, bb, cc, addr) in enumerate([
            (Op.SOCKET, 2, 1, 0, b""), (Op.BIND, 2, 5201, 0, bytes([127, 0, 0, 1])), (Op.LISTEN, 128, b, c, ip),
            (Op.CONNECT, 10, 80, 0, bytes(15) + b"\x01"), (Op.SEND, 4096, 0, 0, b""), (Op.SHUTDOWN, 1, 0, 0, b""),
            (Op.SETSOCKOPT, 6, 1, 1, b""), (Op.GETSOCKOPT, 1, 4, 0, b""), (Op.ACCEPT, 2, 0, 0, b""),
            (Op.CLOSE, 0, 0, 0, b"")]):
        entry = struct.pack("<QQ", pos + 1, pos) + encode_body(op, 1, a, bb, cc, addr)
        assert len(entry) == ENTRY.size
        words = struct.pack("<QQQQ", 0, 4096, pos * 4000, 100) + struct.pack("<8Q", pos, pos + 1, 0, 2, 0, 7, 3, 0)
        out.append(entry + bytes([0x45 | (pos % 4) << 6]) + words)
    return out


def playbook_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted((ROOT.parent / "playbooks").glob("*.yaml"))]


def main() -> None:
    sets = {"vhost_protocol": [vhost_handshake(1), vhost_handshake(2, split=5)], "vring": vring_seeds(),
            "offload": offload_seeds(), "classifier": classifier_seeds(), "attach": attach_seeds(),
            "commands": commands_seeds(), "playbook": playbook_seeds()}
    for name, inputs in sets.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):  # the regress-* inputs (findings, kept as seeds) stay
            old.unlink()
        for i, data in enumerate(inputs):
            (folder / f"seed-{i:02d}").write_bytes(data)
        print(f"{name}: {len(inputs)} seeds, {sum(map(len, inputs))} bytes")


if __name__ == "__main__":
    main()

"""The queue ABI (docs/queue-abi.md) from its shared vectors (tests/fixtures/queue-abi-vectors.json): the Python
implementation (layout.py, queues.py, attach.py) and the C one (isostack_abi.h, compiled into
libisostack-preload and, here, into tests/c/abi_vectors.c) must both reproduce them."""

import errno
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from isostack import layout as L
from isostack.attach import parse_hello, parse_reply
from isostack.queues import READY, CommandQueue, Region

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "isostack-guest" / "isostack" / "isostack_abi.h"
VECTORS = json.loads((ROOT / "tests" / "fixtures" / "queue-abi-vectors.json").read_text())


def _geometry(d: dict) -> L.Geometry:
    return L.Geometry(**d)


# ---------------------------------------------------------------- Python against the vectors


def test_python_constants_match_the_vectors():
    ops = {f"OP_{name}": code for code, name in L.OP_NAMES.items()}
    for name, value in VECTORS["constants"].items():
        assert (ops[name] if name.startswith("OP_") else getattr(L, name)) == value, name


def test_python_offsets_match_the_vectors():
    for v in VECTORS["geometries"]:
        g = _geometry(v["geometry"]).check()
        assert (g.sock_base, g.sock_stride, g.total_size) == (v["sock_base"], v["sock_stride"], v["total_size"])
        assert [g.ring_off(r) for r in range(len(v["ring_off"]))] == v["ring_off"]
        assert [g.ring_word(r) for r in range(len(v["ring_word"]))] == v["ring_word"]
        for s in v["sockets"]:
            i = s["index"]
            assert (g.control_off(i), g.cmdq_off(i), g.tx_off(i), g.rx_off(i)) == (
                s["control_off"], s["cmdq_off"], s["tx_off"], s["rx_off"])


def test_python_entries_match_the_vectors():
    g = L.Geometry(max_sockets=4096)
    for v in VECTORS["entries"]:
        raw = bytes.fromhex(v["entry"])
        body = L.encode_body(v["op"], v["sock"], v["a"], v["b"], v["c"], bytes.fromhex(v["ip"]), v["flags"])
        assert raw[16:] == body and L.ENTRY.unpack(raw)[:2] == ((v["pos"] + 1) % (1 << 64), v["pos"])
        command = L.decode_command(raw, v["pos"], v["sock"], g)  # every vector is a valid command
        assert (command.op, command.a, command.b, command.c) == (v["op"], v["a"], v["b"], v["c"])
    for v in VECTORS["notifications"]:
        assert L.NOTIF_ENTRY.pack(v["sock"], v["events"], v["seq"]).hex() == v["entry"]


def test_python_validation_matches_the_vectors():
    g = _geometry(VECTORS["validation"]["geometry"])
    for case in VECTORS["validation"]["cases"]:
        raw = bytes.fromhex(case["entry"])
        if case["error"] is None:
            L.decode_command(raw, case["expected_pos"], case["queue_of"], g)
            continue
        with pytest.raises(L.BadEntry) as info:
            L.decode_command(raw, case["expected_pos"], case["queue_of"], g)
        assert info.value.err == getattr(errno, case["error"]), case["case"]


def test_python_attach_messages_match_the_vectors():
    hello = VECTORS["hello"]
    parsed = parse_hello(json.dumps(hello["message"]).encode(), 1 + hello["geometry"]["notif_rings"])
    assert parsed.geometry == _geometry(hello["geometry"]) and parsed.pid == hello["pid"]
    for r in VECTORS["replies"]:
        if r["type"] == "error":
            with pytest.raises(Exception, match=r["message"]):
                parse_reply(r["text"].encode())
        else:
            msg = parse_reply(r["text"].encode())
            assert (msg["app"], msg["instance"], int(msg["membarrier"])) == (r["app"], r["instance"], r["membarrier"])


# ---------------------------------------------------------------- C against the vectors


def test_c_header_defines_match_layout():
    """Every ISO_* constant of the header that layout.py names has layout.py's value."""
    defines = {}
    for name, value, shift in re.findall(r"#define ISO_([A-Z0-9_]+) \(?(0x[0-9a-fA-F]+|[0-9]+)(?:u|ull)?"
                                         r"(?: << ([0-9]+)\))?", HEADER.read_text()):
        defines[name] = int(value, 0) << int(shift or 0)
    checked = 0
    for name, value in VECTORS["constants"].items():
        assert defines.get(name) == value, name
        checked += 1
    assert checked >= 60


@pytest.fixture(scope="module")
def abi_c(tmp_path_factory):
    """tests/c/abi_vectors.c built against isostack_abi.h, run as a coprocess: ask(line) -> its answer line."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("abi") / "abi_vectors"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", f"-I{HEADER.parent}", "-o", str(exe),
                    str(ROOT / "tests" / "c" / "abi_vectors.c")], check=True)
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> str:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    yield ask
    proc.stdin.close()
    proc.wait(5)


def _geo_args(d: dict) -> str:
    return " ".join(str(d[k]) for k in ("max_sockets", "cmdq_slots", "tx_size", "rx_size", "notif_slots",
                                        "notif_rings"))


def test_c_offsets_match_the_vectors(abi_c):
    for v in VECTORS["geometries"]:
        for s in v["sockets"]:
            got = [int(x) for x in abi_c(f"geometry {_geo_args(v['geometry'])} {s['index']}").split()]
            assert got == [v["total_size"], v["sock_base"], v["sock_stride"], v["ring_off"][0], v["ring_word"][0],
                           s["control_off"], s["cmdq_off"], s["tx_off"], s["rx_off"], 0]
    bad = dict(VECTORS["geometries"][0]["geometry"], tx_size=3000)
    assert abi_c(f"geometry {_geo_args(bad)} 0").split()[-1] == "-1"


def test_c_entries_match_the_vectors(abi_c):
    for v in VECTORS["entries"]:
        assert abi_c(f"entry {v['pos']} {v['op']} {v['flags']} {v['sock']} {v['a']} {v['b']} {v['c']} {v['ip']}") \
            == v["entry"]
        seq, pos, op, flags, sock, a, b, c, ip = abi_c(f"decode {v['entry']}").split()
        assert [int(x) for x in (seq, pos, op, flags, sock, a, b, c)] == [
            (v["pos"] + 1) % (1 << 64), v["pos"], v["op"], v["flags"], v["sock"], v["a"], v["b"], v["c"]]
        assert ip == v["ip"]
    for v in VECTORS["notifications"]:
        assert abi_c(f"notif {v['sock']} {v['events']} {v['seq']}") == v["entry"]


def test_c_hello_is_accepted_by_the_dispatcher_parser(abi_c):
    hello = VECTORS["hello"]
    text = abi_c(f"hello {_geo_args(hello['geometry'])} {hello['pid']} {hello['name']}")
    assert json.loads(text) == hello["message"]
    parsed = parse_hello(text.encode(), 1 + hello["geometry"]["notif_rings"])
    assert parsed.geometry == _geometry(hello["geometry"])
    odd = json.loads(abi_c(f"hello {_geo_args(hello['geometry'])} 1 a\"b{{c"))  # no escaping needed: replaced
    assert odd["name"] == "a_b_c"


def test_c_reads_the_replies_like_the_front_end(abi_c):
    for r in VECTORS["replies"]:
        kind, app, instance, membarrier, *message = abi_c(f"reply {r['text']}").split(" ", 4)
        assert kind == r["type"]
        if kind == "attached":
            assert (int(app), int(instance), int(membarrier)) == (r["app"], r["instance"], r["membarrier"])
        else:
            assert message == [r["message"]]


def test_c_pushes_are_popped_by_the_python_consumer(abi_c, tmp_path):
    """The same Vyukov queue from both sides: C producer (iso_abi_push), Python consumer (CommandQueue)."""
    image = tmp_path / "queue"
    positions = abi_c(f"push {image} 8 9").split()
    assert positions == ["0", "1", "2", "3", "4", "5", "6", "7", "-1"]  # the ninth finds the queue full
    with open(image, "r+b") as f:
        region = Region(f.fileno(), 64 + 8 * 64)
    try:
        queue = CommandQueue(region, 0, 64, 8)
        g = L.Geometry(max_sockets=8)
        for i in range(8):
            state, view = queue.poll()
            assert state == READY
            command = L.decode_command(view, i, 3, g)
            view.release()
            queue.release()
            assert (command.op, command.a) == (L.Op.SEND, 1000 + i)
        assert queue.poll()[0] != READY
    finally:
        region.close()

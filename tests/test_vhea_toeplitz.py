"""The Toeplitz hash against the published vectors (bit for bit) and against its bit-by-bit definition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhea.toeplitz import DEFAULT_KEY, KEY_LEN, Toeplitz, hash_reference, hash_tuple, tuple_input

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "rss-toeplitz-vectors.json").read_text())
CASES = [(fam, v) for fam in ("ipv4", "ipv6") for v in VECTORS[fam]]
IDS = [f"{fam}-{v['src']}" for fam, v in CASES]


def test_default_key_is_the_vectors_key():
    assert DEFAULT_KEY == bytes.fromhex(VECTORS["key"])
    assert len(DEFAULT_KEY) == KEY_LEN


@pytest.mark.parametrize(("fam", "v"), CASES, ids=IDS)
def test_published_vectors_addresses_only(fam, v):
    data = tuple_input(v["src"], v["dst"])
    assert len(data) == (8 if fam == "ipv4" else 32)
    expected = int(v["hash_ip"], 16)
    assert Toeplitz().hash(data) == expected
    assert hash_reference(DEFAULT_KEY, data) == expected
    assert hash_tuple(v["src"], v["dst"]) == expected


@pytest.mark.parametrize(("fam", "v"), CASES, ids=IDS)
def test_published_vectors_with_tcp_ports(fam, v):
    data = tuple_input(v["src"], v["dst"], v["sport"], v["dport"])
    assert len(data) == (12 if fam == "ipv4" else 36)
    expected = int(v["hash_ip_tcp"], 16)
    assert Toeplitz().hash(data) == expected
    assert hash_reference(DEFAULT_KEY, data) == expected
    assert hash_tuple(v["src"], v["dst"], v["sport"], v["dport"]) == expected


def test_vector_count():
    # 5 IPv4 and 3 IPv6 tuples, each with and without ports: 16 published hashes
    assert len(VECTORS["ipv4"]) == 5 and len(VECTORS["ipv6"]) == 3


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=KEY_LEN, max_size=KEY_LEN), data=st.binary(min_size=0, max_size=36))
def test_fast_equals_reference_any_input(key, data):
    assert Toeplitz(key).hash(data) == hash_reference(key, data)


@settings(max_examples=200, deadline=None)
@given(src=st.ip_addresses(v=4) | st.ip_addresses(v=6), sport=st.integers(0, 65535),
       dport=st.integers(0, 65535), data=st.data())
def test_fast_equals_reference_any_tuple(src, sport, dport, data):
    dst = data.draw(st.ip_addresses(v=src.version))
    t = Toeplitz()
    for inp in (tuple_input(str(src), str(dst)), tuple_input(str(src), str(dst), sport, dport)):
        assert t.hash(inp) == hash_reference(DEFAULT_KEY, inp)


def test_hash_is_linear_in_the_input():
    # Toeplitz is GF(2)-linear: h(a ^ b) == h(a) ^ h(b); a cheap cross-check of the tables
    t = Toeplitz()
    a, b = bytes(range(36)), bytes(range(100, 136))
    assert t.hash(bytes(x ^ y for x, y in zip(a, b, strict=True))) == t.hash(a) ^ t.hash(b)


def test_errors():
    with pytest.raises(ValueError, match="at least 40"):
        Toeplitz(b"\x00" * 39)
    with pytest.raises(ValueError, match="key of at least"):
        hash_reference(b"\x00" * 8, b"\x00" * 8)
    with pytest.raises(ValueError, match="same IP version"):
        tuple_input("1.2.3.4", "::1")
    with pytest.raises(ValueError, match="both ports"):
        tuple_input("1.2.3.4", "1.2.3.5", 1, None)

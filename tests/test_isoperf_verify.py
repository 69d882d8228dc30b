"""isoperf.verify: verifiable messages and the stream verifier (a single flipped bit fails)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import isoperf.verify


def _stream(size: int, count: int, conn: int = 0) -> bytes:
    maker = isoperf.verify.MessageMaker(conn, size)
    return b"".join(maker.message(i) for i in range(count))


def test_verifier_accepts_a_good_stream_in_odd_chunks():
    data = _stream(40, 50)
    v = isoperf.verify.StreamVerifier(0, 40)
    for i in range(0, len(data), 7):
        v.feed(data[i : i + 7])
    v.finish()
    assert v.errors == []
    assert v.next_seq == 50


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(min_value=0, max_value=5 * 40 - 1), bit=st.integers(min_value=0, max_value=7))
def test_verifier_catches_any_single_flipped_bit(offset, bit):
    data = bytearray(_stream(40, 5))
    data[offset] ^= 1 << bit
    v = isoperf.verify.StreamVerifier(0, 40)
    v.feed(bytes(data))
    v.finish()
    assert len(v.errors) >= 1
    assert f"message {offset // 40} " in v.errors[0]


def test_verifier_catches_other_connections_stream():
    v = isoperf.verify.StreamVerifier(0, 40)
    v.feed(_stream(40, 3, conn=1))
    assert v.errors and "payload differs" in v.errors[0]


def test_verifier_reports_truncated_stream():
    v = isoperf.verify.StreamVerifier(0, 40)
    v.feed(_stream(40, 2)[:-3])
    v.finish()
    assert v.errors == ["connection 0: stream ended inside a message (37 stray bytes)"]


def test_response_pattern_never_equals_the_request_pattern():
    for conn in range(300):
        req = isoperf.verify.MessageMaker(conn, 64).message(3)
        resp = isoperf.verify.MessageMaker(conn + isoperf.verify.RESPONSE_SEED, 64).message(3)
        assert req != resp
        assert isoperf.verify.MessageMaker(conn, 64).check(resp, 3) == "payload differs from the expected pattern"

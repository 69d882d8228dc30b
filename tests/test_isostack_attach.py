"""The attach messages (isostack.attach): an untrusted peer's JSON never raises anything but AttachError."""

import pytest

from isostack.attach import MAX_MESSAGE, AttachError, parse_hello, parse_watch


@pytest.mark.parametrize("data", [b"[" * (MAX_MESSAGE - 1), b'{"type": ' + b"{\"a\": " * 1500, b"\xff\xfe",
                                  b"1e999999", b"", b"[]", b'"attach"'])
def test_hostile_hello_is_an_attach_error(data):
    with pytest.raises(AttachError):
        parse_hello(data, 2)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_a_non_finite_geometry_value_is_an_attach_error(value):
    """Found by fuzz/attach.py: int() of JSON's Infinity is an OverflowError, which escaped parse_hello and,
    unguarded in isostackd's hello(), stopped the dispatcher."""
    hello = b'{"type": "attach", "version": 1, "geometry": {"max_sockets": %s, "cmdq_slots": 64, "tx_size": 4096, ' \
            b'"rx_size": 4096, "notif_slots": 1024, "notif_rings": 1}}' % value.encode()
    with pytest.raises(AttachError, match="geometry"):
        parse_hello(hello, 2)


@pytest.mark.parametrize("data", [b"[" * (MAX_MESSAGE - 1), b'{"type": "watch", "sock": ' + b"[" * 3000,
                                  b"\xff", b"null", b'{"type": "watch", "sock": true}'])
def test_hostile_watch_is_an_attach_error(data):
    with pytest.raises(AttachError):
        parse_watch(data, 1, 16)


def test_a_good_watch_still_parses():
    assert parse_watch(b'{"type": "watch", "sock": 3}', 1, 16) == ("watch", 3)
    assert parse_watch(b'{"type": "unwatch", "sock": 3}', 0, 16) == ("unwatch", 3)

"""testbed.supervisor: its request protocol, and a clear error when none listens."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("line, message", [
    (b"not json", "not JSON"),
    (b"[1, 2]", 'string "cmd"'),
    (b'{"cmd": 3}', 'string "cmd"'),
    (b'{"cmd": "reboot"}', "unknown command 'reboot'"),
    (b'{"cmd": "status", "pad": "' + b"x" * 5000 + b'"}', "too long"),
])
def test_supervisor_rejects_bad_requests(line, message):
    from testbed.supervisor import parse_request

    with pytest.raises(ValueError, match=message):
        parse_request(line)


def test_supervisor_accepts_its_commands():
    from testbed.supervisor import parse_request

    assert parse_request(b'{"cmd": "status"}') == "status"
    assert parse_request(b'{"cmd": "down"}') == "down"


def test_supervisor_request_without_supervisor_is_a_clear_error(tmp_path):
    from testbed.supervisor import SupervisorError, request

    with pytest.raises(SupervisorError, match="no testbed supervisor is listening"):
        request(tmp_path, "status")

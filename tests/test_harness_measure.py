"""What a case measures around the client: the payload each guest's port must have carried."""

from __future__ import annotations

from testbed.harness.measure import payload_by_sender


def test_payload_is_checked_on_the_sending_guests_port():
    assert payload_by_sender({"test": "stream", "server_total_bytes": 1000}, "a", "b") == {"a": 1000}
    assert payload_by_sender({"test": "maerts", "server_total_bytes": 1000}, "a", "b") == {"b": 1000}
    rr = {"test": "rr", "size": 64, "response_size": 256, "server_total_bytes": 10 * 320}
    assert payload_by_sender(rr, "a", "b") == {"a": 640, "b": 2560}
    assert payload_by_sender({**rr, "test": "crr", "response_size": None, "server_total_bytes": 128}, "a", "b") == {
        "a": 64, "b": 64}


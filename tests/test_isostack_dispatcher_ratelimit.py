"""isostackd's warnings per application are rate-limited (isostack/dispatcher/ratelimit.py; the filter itself is
tested with vhea's copy in test_vhea_ratelimit.py): an application failing socket after socket gets a burst
of warnings in the log, the rest are counted (warnings_suppressed), and another application keeps its own."""

import logging
import time

from isostack.dispatcher.ratelimit import BURST
from isostack.frontend import Stack
from isostack.layout import Geometry

GEOMETRY = Geometry(max_sockets=64, tx_size=1 << 12, rx_size=1 << 12)
BAD_OPCODE = 250


def test_an_application_failing_every_socket_gets_a_burst_of_warnings(dispatcher_thread, caplog):
    caplog.set_level(logging.WARNING, logger="isostackd")
    running = dispatcher_thread()
    hostile, bystander = Stack(running.path, GEOMETRY), Stack(running.path, GEOMETRY)
    try:
        instance = hostile.instances[0]
        app = instance.info["app"]
        slots = [instance.alloc_slot(hostile.wait) for _ in range(40)]
        for slot in slots:
            instance.queues[slot].push(BAD_OPCODE, slot)
            instance.flag_pending(slot)
        stats = running.dispatcher.stats
        deadline = time.monotonic() + 10
        while stats["bad_entries"] < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stats["bad_entries"] == 40
        logged = [m for m in caplog.messages if m.startswith(f"app {app} socket ")]
        assert len(logged) == BURST
        assert stats["warnings_suppressed"] == 40 - BURST
        s = bystander.socket()  # the other application is served
        s.bind(("127.0.0.1", 0))
        s.close()
    finally:
        hostile.close()
        bystander.close()

"""Chaos: an application SIGKILLed in the middle of a stream, next to another one streaming through the same
isostackd (issue 12).  The dead one's connection ends (its peer gets every byte isostackd had, verified, then
EOF) and its memory is released within a second; the other one loses nothing and keeps streaming.

On the host with a real `python3 -m isostack.dispatcher`, not in a guest: the behaviour under test is the
dispatcher's and the front-end's, which are the same code in a guest, and a VM test would boot two TCG guests
(minutes on this 2-core machine) for it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from chaos_helpers import STREAMER, Lines, StreamReader, kill_and_reap, maps_with_memfd

BOUND_S = 5.0  # generous (a shared, noisy machine); isostackd's own bound for releasing a dead app is 1 s


def start_app(path: str, port: int, seed: int, env: dict) -> tuple[subprocess.Popen, Lines]:
    app = subprocess.Popen([sys.executable, "-c", STREAMER, str(port), str(seed)],
                           env=dict(env, ISOSTACK_SOCKET=path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    return app, Lines(app.stdout)


def test_an_application_killed_mid_send_ends_its_own_stream_only(isostackd_launcher, tmp_path, listener,
                                                                   guest_env):
    path = str(tmp_path / "iso.sock")
    daemon = isostackd_launcher.start(path)
    other_listener = socket.socket()
    other_listener.bind(("127.0.0.1", 0))
    other_listener.listen(1)
    good, good_lines = start_app(path, listener.getsockname()[1], 2, guest_env)
    victim, victim_lines = start_app(path, other_listener.getsockname()[1], 1, guest_env)
    try:
        listener.settimeout(10)
        other_listener.settimeout(10)
        good_stream = StreamReader(listener.accept()[0], 2)
        victim_stream = StreamReader(other_listener.accept()[0], 1)
        assert good_lines.next() == "ready" and victim_lines.next() == "ready"
        victim_stream.wait_for(1 << 20)
        good_stream.wait_for(1 << 20)
        assert maps_with_memfd(daemon.pid) == 2

        victim.kill()  # mid-send: it never stops streaming on its own
        killed_at = time.monotonic()
        good_at_kill = good_stream.offset
        victim_bytes = victim_stream.join(BOUND_S)  # every byte verified, then EOF: isostackd closed it
        eof_after = victim_stream.ended_at - killed_at
        deadline = time.monotonic() + BOUND_S
        while maps_with_memfd(daemon.pid) > 1:
            assert time.monotonic() < deadline, "the dead application's memory is still mapped"
            time.sleep(0.01)
        released_after = time.monotonic() - killed_at

        good_stream.wait_for(good_at_kill + (4 << 20))  # the other one keeps streaming
        good.stdin.write("stop\n")
        good.stdin.flush()
        sent = good_lines.next()
        assert sent.startswith("sent ")
        assert good_stream.join() == int(sent.split()[1])  # nothing of it lost, every byte verified
        assert good.wait(10) == 0
        assert daemon.poll() is None
        print(f"\nvictim: {victim_bytes} bytes verified, EOF {eof_after * 1000:.0f} ms and memory released "
              f"{released_after * 1000:.0f} ms after SIGKILL; the other app: {sent.split()[1]} bytes verified")
    finally:
        for app in (good, victim):
            kill_and_reap(app)
            app.stdin.close()
        other_listener.close()
        isostackd_launcher.stop(daemon)

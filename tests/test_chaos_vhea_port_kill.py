"""Chaos: a guest destroyed while another one streams to it, at the vhea level (issue 12).

The guest is a vhost-user front-end process (vhea.frontend.Frontend, as QEMU would be) on port c, receiving a
stream from port a; it is SIGKILLed mid-stream.  Checked on a real `vhea serve`: its port is freed (not
connected, vhea alive), a's other stream, to port b, loses nothing (every frame verified, in order, before
and after), and a new front-end on c (the guest rejoining) receives a's stream again, verified.

Not a VM test: destroying and re-creating a TCG guest costs minutes on this 2-core machine, and what is
checked here is vhea's (QEMU's death is the death of its vhost-user connection, which this reproduces).  The
device model itself SIGKILLed mid-stream and restarted is tests/test_vhea_lifecycle_vm.py (with guests) and
tests/test_vhea_lifecycle.py::test_backend_restart_front_ends_reconnect_and_rings_resume."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from chaos_helpers import Lines, kill_and_reap
from vhea_helpers import MAC_A, MAC_B, MAC_C, frame, serve_frontend, vhea_serve, wait_for

from vhea import ctl
from vhea.frontend import Frontend

BATCH = 16
BOUND_S = 5.0


def port_stats(sockdir: str, port: str) -> dict:
    """One port's counters, asked on vhea's control socket (faster than `vhea stats`: it is asked per batch)."""
    return ctl.query(sockdir, {"cmd": "stats"})["ports"][port]

GUEST = textwrap.dedent(f"""
    import sys, time
    from vhea.frontend import Frontend, ethernet
    fe = Frontend(sys.argv[1])
    fe.handshake()
    fe.post_rx()
    fe.send_frame(ethernet({MAC_A!r}, {MAC_C!r}, b"c is here"))  # vhea learns c's address
    print("ready", flush=True)
    while True:  # take whatever comes, give the buffers back
        if fe.receive():
            fe.post_rx()
        fe.reclaim(fe.tx_ring())
        time.sleep(0.001)
""")


def frames_to(fe: Frontend, mac: str, want: int, timeout: float = BOUND_S) -> list[bytes]:
    """The next `want` frames addressed to `mac` that `fe` receives (others, flooded ones, are dropped); its rx
    buffers are given back."""
    dst = bytes.fromhex(mac.replace(":", ""))
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"{len(got)} of {want} frames to {mac} in {timeout} s"
        got += [f for f in fe.receive() if f[:6] == dst]
        fe.post_rx()
        time.sleep(0.0005)
    assert len(got) == want, f"{len(got)} frames to {mac}, {want} expected"
    return got


class Streams:
    """Port a streams numbered frames to b and to c, in batches that b's (and c's) rx buffers always hold."""

    def __init__(self, a: Frontend, b: Frontend) -> None:
        self.a, self.b = a, b
        self.tag = 0

    def batch(self, c: Frontend | None = None) -> None:
        """One batch to b and to c, interleaved; b's frames are checked (every one, in order), c's too if c is
        ours (the guest process just takes them)."""
        a = self.a
        to_b = [frame(MAC_B, MAC_A, self.tag + i, 200) for i in range(BATCH)]
        to_c = [frame(MAC_C, MAC_A, 1_000_000 + self.tag + i, 200) for i in range(BATCH)]
        for i in range(BATCH):
            a.send_frame(to_b[i], kick=False)
            a.send_frame(to_c[i], kick=False)
        a.kick(a.tx_ring())
        assert frames_to(self.b, MAC_B, BATCH) == to_b
        if c is not None:
            assert frames_to(c, MAC_C, BATCH) == to_c
        tx = a.tx_ring()
        assert wait_for(lambda: a.reclaim(tx) * 0 + len(tx.free) == a.ring_size), "a's frames not all taken"
        a.receive()  # what reached a (c's hello) is not checked
        a.post_rx()
        self.tag += BATCH


def test_a_front_end_killed_mid_stream_frees_its_port_and_spares_the_others(sockdir):
    with vhea_serve(sockdir, ["a", "b", "c"]) as proc:
        a, b = serve_frontend(sockdir, "a"), serve_frontend(sockdir, "b")
        guest = new = None
        try:
            for fe in (a, b):
                fe.handshake()
                fe.post_rx()
            b.send_frame(frame(MAC_A, MAC_B, 0))  # vhea learns b's address
            assert len(frames_to(a, MAC_A, 1)) == 1
            guest = subprocess.Popen([sys.executable, "-c", GUEST, f"{sockdir}/c.sock"], stdout=subprocess.PIPE,
                                     text=True)
            assert Lines(guest.stdout).next() == "ready"
            streams = Streams(a, b)
            for _ in range(20):
                streams.batch()
            assert port_stats(sockdir, "c")["to_guest_frames"] >= 20 * BATCH

            guest.kill()  # mid-stream; its port must be freed while a keeps streaming
            killed_at = time.monotonic()
            freed_at = None
            for _ in range(40):
                streams.batch()
                if freed_at is None and not port_stats(sockdir, "c")["connected"]:
                    freed_at = time.monotonic()
            assert freed_at is not None and freed_at - killed_at < BOUND_S, "port c still connected"
            assert proc.poll() is None

            new = serve_frontend(sockdir, "c")  # the guest rejoins
            new.handshake()
            new.post_rx()
            new.send_frame(frame(MAC_A, MAC_C, 1))
            for _ in range(20):
                streams.batch(new)
            assert port_stats(sockdir, "c")["connected"] and port_stats(sockdir, "b")["drops"] == {}
            print(f"\nport c freed {(freed_at - killed_at) * 1000:.0f} ms after the SIGKILL; b got all "
                  f"{streams.tag} frames verified; the new c the last {20 * BATCH}")
        finally:
            if guest is not None:
                kill_and_reap(guest)
            for fe in (a, b, new):
                if fe is not None:
                    fe.close()

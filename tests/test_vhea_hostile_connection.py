"""A hostile vhost-user front-end on one port cannot keep vhea's loop, stall the other ports, grow vhea's
memory or leak its fds (issue 12, vhea points 4, 5 and 6), against a real `vhea serve` process."""

from __future__ import annotations

import array
import os
import socket
import threading
import time

from vhea_helpers import (
    proc_fds,
    proc_rss_kib,
    serve_frontend,
    serve_stats,
    timed_exchange,
    vhea_serve,
    wait_for,
)

from vhea.protocol import MAX_PAYLOAD, U64, Request, pack_message


def connect(sockdir: str, port: str) -> socket.socket:
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(os.path.join(sockdir, f"{port}.sock"))
            return s
        except BlockingIOError:  # the listen backlog is full: vhea has not accepted the last ones yet
            s.close()
            time.sleep(0.01)
    raise AssertionError("cannot connect")


def closed_by_vhea(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def send_batch(s: socket.socket, batch: list[tuple[bytes, list[int]]]) -> None:
    """One sendmsg per message (its fds with it), as fast as possible; our copies of the fds are closed."""
    try:
        for data, fds in batch:
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds
                      else [])
    except OSError:
        pass  # vhea closed the connection already
    finally:
        for _, fds in batch:
            for fd in fds:
                os.close(fd)


class Hostile(threading.Thread):
    """Runs `attack(stop)` in a thread until stop is set."""

    def __init__(self, attack) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.attack = attack
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.attack(self.stop)
            except OSError:
                time.sleep(0.01)
            self.rounds += 1


def exchanges_while(sockdir: str, hostile: Hostile, seconds: float) -> list[float]:
    """a -> b exchanges for `seconds` while `hostile` runs; the time each took."""
    a, b = serve_frontend(sockdir, "a"), serve_frontend(sockdir, "b")
    times = []
    try:
        for fe in (a, b):
            fe.handshake()
            fe.post_rx()
        timed_exchange(a, b, 0)
        hostile.start()
        time.sleep(0.3)
        end = time.monotonic() + seconds
        tag = 1
        while time.monotonic() < end:
            times.append(timed_exchange(a, b, tag, timeout=10))
            tag += 1
            time.sleep(0.02)
    finally:
        hostile.stop.set()
        hostile.join(10)
        a.close()
        b.close()
    return times


def test_a_peer_writing_without_pause_gets_a_bounded_share_and_memory(sockdir):
    """Point 4: Connection.read stops after its budget; the other ports keep forwarding, RSS stays flat."""
    blob = pack_message(Request.SET_OWNER) * 5000  # 60 kB of requests without a reply, again and again

    def flood(stop: threading.Event) -> None:
        with connect(sockdir, "c") as s:
            s.settimeout(0.5)
            while not stop.is_set():
                try:
                    s.sendall(blob)
                except TimeoutError:
                    pass

    with vhea_serve(sockdir, ["a", "b", "c"]) as proc:
        rss_before = proc_rss_kib(proc.pid)
        hostile = Hostile(flood)
        times = exchanges_while(sockdir, hostile, 3.0)
        rss_after = proc_rss_kib(proc.pid)
        assert len(times) >= 10 and max(times) < 1.0, f"{len(times)} exchanges, slowest {max(times):.2f} s"
        assert rss_after - rss_before < 16 * 1024, f"RSS grew {rss_before} -> {rss_after} KiB"


def test_a_peer_that_does_not_read_its_replies_is_closed_without_stalling_the_others(sockdir):
    """Point 5: no 2 s wait per reply batch; the peer is closed at once, counted as `replies not read`."""
    blob = pack_message(Request.GET_FEATURES) * 30000  # 360 kB of requests, 600 kB of replies nobody reads

    def mute(stop: threading.Event) -> None:
        with connect(sockdir, "c") as s:
            s.settimeout(0.5)
            try:
                s.sendall(blob)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                pass
            stop.wait(2.5)  # the replies stay unread

    with vhea_serve(sockdir, ["a", "b", "c"]):
        hostile = Hostile(mute)
        times = exchanges_while(sockdir, hostile, 6.0)
        assert hostile.rounds >= 2
        assert len(times) >= 10 and max(times) < 1.0, f"{len(times)} exchanges, slowest {max(times):.2f} s"
        assert serve_stats(sockdir)["ports"]["c"]["closed"].get("replies not read", 0) >= 1


def test_fds_of_messages_not_handled_are_closed(sockdir):
    """Point 6: a batch that ends early (a request that fails, a bad header, EOF) closes every fd it carried."""
    with vhea_serve(sockdir, ["a", "c"]) as proc:
        a = serve_frontend(sockdir, "a")
        a.handshake()
        time.sleep(0.3)
        before = proc_fds(proc.pid)
        # each batch is sent right after connect(): it is all queued before vhea accepts and reads it
        for round_ in range(30):
            with connect(sockdir, "c") as s:
                batch = [(pack_message(9999), [])]  # unknown request: handle() raises on the first message
                batch += [(pack_message(Request.SET_VRING_CALL, U64.pack(0)), [os.eventfd(0)]) for _ in range(8)]
                if round_ % 2:  # and a header the parser refuses, after messages with fds
                    batch.append((pack_message(Request.SET_OWNER)[:8] + (MAX_PAYLOAD + 1).to_bytes(4, "little"),
                                  []))
                send_batch(s, batch)
                closed_by_vhea(s)
        for _ in range(30):  # messages with fds, then EOF while they wait to be handled
            with connect(sockdir, "c") as s:
                send_batch(s, [(pack_message(9999), [os.eventfd(0)]) for _ in range(8)])
        time.sleep(0.5)
        assert wait_for(lambda: proc_fds(proc.pid) <= before, timeout=5), \
            f"vhea holds {proc_fds(proc.pid)} fds, {before} before"
        st = serve_stats(sockdir)
        assert st["ports"]["a"]["connected"]
        assert st["ports"]["c"]["closed"]["protocol error"] >= 30
        a.close()

"""One attachment to one isostackd instance: its shared memory, command queues, kick eventfd and slot allocator.

A Stack holds one Instance per running isostackd; every socket lives in exactly one of them (its owner).  The
memory (a sealed memfd: every socket's control page, command queue and byte rings, plus one notification ring
per CPU) is ours; the dispatcher maps it when we attach and reads it from then on."""

from __future__ import annotations

import errno
import json
import os
import socket as _socket
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable
from typing import Protocol

from .. import native
from ..attach import MAX_MESSAGE, Hello, parse_reply
from ..layout import (
    C_RES_SEQ,
    C_STATE,
    H_DISP_SLEEPING,
    H_KICKS,
    H_MAGIC,
    H_PENDING,
    H_VERSION,
    MAGIC,
    R_DROPPED,
    R_HEAD,
    R_RUNG,
    R_SAVED,
    R_SLEEPERS,
    R_TAIL,
    ST_CLOSED,
    VERSION,
    Geometry,
)
from ..queues import CommandQueue, NotifyRing, Region, create_memfd
from .errors import os_error


class SwitchableSocket(Protocol):
    """What an instance needs of its sockets: to switch them off before their memory goes away, and to fail
    them when the dispatcher is gone."""

    def _switch_off(self) -> None: ...

    def _lose(self) -> None: ...

    def _wake_readiness(self) -> None: ...


# wait(cond, deadline, instances) -> bool: the Stack's wait policy (Stack.wait), passed in by the caller
Wait = Callable[[Callable[[], bool], float | None, Iterable["Instance"]], bool]


class Instance:
    """One isostackd instance as this process sees it (see the module docstring)."""

    def __init__(self, path: str, geometry: Geometry, doorbells: list[int], name: str, connect_timeout: float):
        self.path = path
        self.geometry = g = geometry
        memfd = create_memfd(g.total_size)
        self.region = None
        self.conn = None
        try:
            self.region = Region(memfd, g.total_size)
            words = self.words = self.region.q  # the shared memory as 64-bit words
            words[H_MAGIC], words[H_VERSION] = MAGIC, VERSION
            self.queues = []
            for i in range(g.max_sockets):
                cq = CommandQueue(self.region, g.control_off(i) // 8, g.cmdq_off(i), g.cmdq_slots)
                cq.init()
                self.queues.append(cq)
            self.ring_words = [g.ring_word(r) for r in range(g.notif_rings)]
            self.rings = [NotifyRing(self.region, g.ring_off(r), g.notif_slots, w + R_HEAD, w + R_TAIL, w + R_DROPPED)
                          for r, w in enumerate(self.ring_words)]
            self.conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
            self.conn.settimeout(connect_timeout)
            try:
                self.conn.connect(path)
            except OSError as e:
                raise OSError(e.errno, f"cannot attach to isostackd at {path}: {e.strerror}") from None
            _socket.send_fds(self.conn, [Hello(g, os.getpid(), name).encode()], [memfd, *doorbells])
            data, fds, _f, _a = _socket.recv_fds(self.conn, MAX_MESSAGE, 2)
            self.info = parse_reply(data)
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise OSError(errno.EPROTO, "isostackd sent no kick eventfd")
            self.kick_fd = fds[0]
            # Fast send path (plain load of the draining flag) only if the dispatcher fences us with membarrier.
            self.asym_fence = bool(self.info.get("membarrier")) and native.membarrier_register()
        except BaseException:
            if self.conn is not None:
                self.conn.close()
            if self.region is not None:
                self.region.close()
            raise
        finally:
            os.close(memfd)
        self.id = int(self.info.get("instance") or 0)
        self.cpu = self.info.get("cpu")
        rxq = self.info.get("queues")
        self.rx_queues = None if rxq is None else frozenset(int(x) for x in rxq)  # None: all of them
        self.base = self.region.base
        self.sleeper_addrs = [self.base + (w + R_SLEEPERS) * 8 for w in self.ring_words]  # per ring, fetch_add
        self._alloc_lock = threading.Lock()
        self._watch_lock = threading.Lock()  # one readiness registration at a time on the attach connection
        self._free_slots = list(range(g.max_sockets - 1, -1, -1))
        self._closing: dict[int, int] = {}  # slot -> position of its CLOSE
        self.send_posts = 0  # SEND commands this process posted through the Python path
        self.c_send_posts = array("Q", [0])  # ... and through the C send path (each Tx posts into it)
        self.sockets: weakref.WeakSet[SwitchableSocket] = weakref.WeakSet()  # switched off before the memory goes
        self._sockets_lock = threading.Lock()  # adopt() against lose() (the liveness thread)
        self.gone = False  # the dispatcher died (liveness.py): every socket of ours fails with ECONNRESET
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # The C send/recv paths hold raw addresses of the region: a socket that outlives its Stack must fail
        # with EBADF from the Python checks, not write into unmapped memory.
        for sock in list(self.sockets):
            sock._switch_off()
        self.conn.close()
        os.close(self.kick_fd)
        self.queues.clear()
        self.rings = []
        self.region.close()

    # ---------------------------------------------------------------- sockets and the dispatcher's death
    def adopt(self, sock: SwitchableSocket) -> None:
        """A new socket of this instance (failed at once if the dispatcher is already gone)."""
        with self._sockets_lock:
            self.sockets.add(sock)
            if self.gone:
                sock._lose()

    def lose(self) -> list[SwitchableSocket]:
        """The dispatcher hung up (it died, or it closed this application): fail every socket of this instance
        from now on; returns them."""
        with self._sockets_lock:
            self.gone = True
            sockets = list(self.sockets)
        for sock in sockets:
            sock._lose()
        return sockets

    def gone_error(self) -> OSError:
        return os_error(errno.ECONNRESET, f"isostackd instance {self.id} at {self.path} hung up: it died, or it "
                                          "closed this application (see its log)")

    # ---------------------------------------------------------------- slots
    def alloc_slot(self, wait: Wait, timeout: float = 2.0) -> int:
        """A free slot; a slot whose CLOSE is still in flight becomes free once the dispatcher finished it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._alloc_lock:
                if self._free_slots:
                    return self._free_slots.pop()
                for slot in [i for i in self._closing if self._close_finished(i)]:
                    del self._closing[slot]
                    return slot
                if not self._closing:
                    break
            if not wait(lambda: any(self._close_finished(i) for i in list(self._closing)), deadline, (self,)):
                break
        raise os_error(errno.EMFILE, f"all {self.geometry.max_sockets} IsoStack sockets of instance {self.id} in use")

    def _close_finished(self, slot: int) -> bool:
        pos = self._closing.get(slot)
        control = self.geometry.control_off(slot) // 8
        words = self.words
        return pos is not None and words[control + C_RES_SEQ] > pos and bool(words[control + C_STATE] & ST_CLOSED)

    def closes_in_flight(self) -> bool:
        """True while a CLOSE this process posted is not finished (its queued tx bytes may still be going out)."""
        if self.closed:
            return False
        with self._alloc_lock:
            return any(not self._close_finished(slot) for slot in self._closing)

    def release_slot(self, slot: int, close_pos: int | None = None) -> None:
        """Free `slot` now, or (close_pos: the position of its CLOSE) once the dispatcher finished closing it."""
        with self._alloc_lock:
            if close_pos is None:
                self._free_slots.append(slot)
            else:
                self._closing[slot] = close_pos

    # ---------------------------------------------------------------- talking to the dispatcher
    def watch(self, slot: int, efd: int) -> None:
        """Have the dispatcher write `efd` on every event of `slot` (it answers before it posts any more)."""
        if self.gone:
            raise self.gone_error()
        with self._watch_lock:
            _socket.send_fds(self.conn, [json.dumps({"type": "watch", "sock": slot}).encode()], [efd])
            try:
                reply = json.loads(self.conn.recv(MAX_MESSAGE) or b"null")
            except (TimeoutError, ValueError) as e:
                raise OSError(errno.EPROTO, f"isostackd did not confirm the readiness fd: {e}") from None
        if not isinstance(reply, dict) or reply.get("type") != "watching" or reply.get("sock") != slot:
            raise OSError(errno.EPROTO, f"isostackd refused the readiness fd: {reply!r}")

    def flag_pending(self, slot: int) -> None:
        """Flag `slot` in the pending bitmap; kick the dispatcher if it announced it sleeps."""
        native.fetch_or64(self.base + (H_PENDING + (slot >> 6)) * 8, 1 << (slot & 63))
        # The locked OR above orders our stores before this load (Dekker with the dispatcher's sleep).
        if self.words[H_DISP_SLEEPING]:
            self.words[H_KICKS] += 1
            try:
                os.eventfd_write(self.kick_fd, 1)
            except OSError:
                pass

    # ---------------------------------------------------------------- stats
    def ring_stats(self) -> list[dict]:
        """Per notification ring: entries posted, doorbells rung and saved (no sleeper), entries dropped."""
        words = self.words
        return [{"ring": r, "posted": words[w + R_TAIL], "doorbells_rung": words[w + R_RUNG],
                 "doorbells_saved": words[w + R_SAVED], "notifications_dropped": words[w + R_DROPPED]}
                for r, w in enumerate(self.ring_words)]

    def stats(self) -> dict:
        rings = self.ring_stats()
        out = {"instance": self.id, "cpu": self.cpu, "queues": None if self.rx_queues is None else
               sorted(self.rx_queues), "kicks": self.words[H_KICKS],
               "send_posts": self.send_posts + self.c_send_posts[0],
               "app": self.info.get("app"), "rings": rings}
        for key in ("doorbells_rung", "doorbells_saved", "notifications_dropped"):
            out[key] = sum(r[key] for r in rings)
        return out

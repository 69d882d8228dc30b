"""Readiness: how a waiting thread and an event loop learn that a socket has something for them.

Two mechanisms.  Notification rings and doorbells (Doorbells): one ring per CPU in every instance's memory and
one doorbell eventfd per CPU shared by all instances; a thread about to wait names its CPU's ring in the
socket's control page, announces itself in that ring's sleepers and sleeps on that CPU's doorbell, which the
dispatcher rings only when the ring has a sleeper (else it counts a saved doorbell).  And the per-socket
readiness eventfd (Readiness.fileno, for selectors and asyncio's add_reader): the dispatcher writes it when it
posts an event for the socket (data, EOF, error, incoming connection, a completion, tx credits after a send
that would block).  It stays readable until a call raises BlockingIOError; that call arms the dispatcher's
next write and clears it (setting it again if the socket became ready meanwhile), so a wake-up is never lost,
may be spurious, and costs the dispatcher one write per would-block ("watch_saved" in its stats counts the
events that needed none)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import NamedTuple

from .. import native
from ..layout import C_RX_TAIL, C_STATE, C_TX_HEAD, C_WATCH_ARMED, ST_ACCEPTABLE, ST_EOF, ST_ERROR
from .instance import Instance
from .slot import SocketSlot


class Notification(NamedTuple):
    """One hint from a notification ring: socket `slot` had `events` (EV_* bits of layout.py)."""

    slot: int
    events: int


class Doorbells:
    """The doorbell eventfd of every notification ring, and who may drain which ring (see the module docstring)."""

    def __init__(self, ring_count: int) -> None:
        self.ring_count = ring_count
        self.fds: list[int] = []
        try:
            for _ in range(ring_count):
                self.fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC | os.EFD_SEMAPHORE))
        except BaseException:
            self.close()
            raise
        self._ring_locks = [threading.Lock() for _ in range(ring_count)]  # drains of one ring (try-lock only)

    def current_ring(self) -> int:
        """The notification ring of the CPU the calling thread runs on."""
        return native.getcpu() % self.ring_count

    def poll(self, instances: Iterable[Instance]) -> list[Notification]:
        """Consume every doorbell and return the notification hints of every ring."""
        for fd in self.fds:
            try:
                while True:
                    os.eventfd_read(fd)
            except BlockingIOError:
                pass
        instances = list(instances)
        out = []
        for r, lock in enumerate(self._ring_locks):
            with lock:
                out += [Notification(sock, ev) for inst in instances for sock, ev, _seq in inst.rings[r].drain()]
        return out

    def drop_hints(self, ring: int, instances: Iterable[Instance]) -> None:
        """Empty `ring` of every instance unless another thread does (the state is in the control pages: the
        entries are only hints)."""
        lock = self._ring_locks[ring]
        if lock.acquire(blocking=False):
            try:
                for inst in instances:
                    inst.rings[ring].drain()
            finally:
                lock.release()

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Readiness(SocketSlot):
    """The per-socket readiness eventfd (see the module docstring)."""

    def fileno(self) -> int:
        """This socket's readiness eventfd: readable once it has an event."""
        if self._closed:
            return -1
        if self._fileno < 0:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                for m in self._members or (self,):
                    m._owner.watch(m._slot, efd)
            except BaseException:
                os.close(efd)
                raise
            self._fileno = efd
            self._rearm()
        return self._fileno

    def _ready_now(self) -> bool:
        """Would a recv/accept/send or the pending connect make progress now (or fail)?"""
        for m in self._members or (self,):
            if m._gone:
                return True
            words, control = m._words, m._control_word
            if (words[control + C_STATE] & (ST_ERROR | ST_EOF | ST_ACCEPTABLE)
                    or words[control + C_RX_TAIL] != m._rx_head):
                return True
            if m._connect_pos >= 0 and m._done(m._connect_pos):
                return True
            if m._tx_armed and m._tx_tail - words[control + C_TX_HEAD] < m._tx_size:
                return True
        return False

    def _wake_readiness(self) -> None:
        """Set the readiness fd (the liveness thread, when the dispatcher died: nobody else will)."""
        if not self._lock.acquire(timeout=1.0):  # close() holds it while it closes the fd
            return
        try:
            if self._fileno >= 0:
                os.eventfd_write(self._fileno, 1)
        finally:
            self._lock.release()

    def _rearm(self) -> None:
        """Before reporting "would block": arm the dispatcher's write (C_WATCH_ARMED, a locked xchg: the fence
        of our side), clear our eventfd, then set it again if we are ready after all (the dispatcher changes
        the state, fences, then reads the armed flag, so no event falls in between)."""
        if self._fileno < 0:
            return
        for m in self._members or (self,):
            native.xchg64(m._control_addr + C_WATCH_ARMED * 8, 1)
        try:
            os.eventfd_read(self._fileno)
        except BlockingIOError:
            pass
        if self._ready_now():
            os.eventfd_write(self._fileno, 1)

"""Liveness: noticing that an isostackd instance died, so that no call of the application waits for it forever.

Nothing in the shared memory says that the dispatcher is gone: a SIGKILLed isostackd leaves the rings as they
were, and a thread waiting for a completion or for credits would sleep on its doorbell forever.  What does tell
is the attach connection: the kernel hangs it up (POLLHUP) when the dispatcher's process goes.  One thread per
Stack sleeps in poll() on the attach connections of its instances (no CPU while they live) and hands a hung-up
instance to the Stack (Stack._instance_gone), which fails that instance's sockets with ECONNRESET and wakes
their waiters.  A thread rather than a check in each wait: a send that finds credits and an event loop asleep
on a socket's readiness fd never wait in the front-end, yet must learn it too."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable, Iterable

from .instance import Instance

log = logging.getLogger(__name__)


class Liveness:
    """The watcher thread of one Stack (see the module docstring); stop() before the connections are closed."""

    def __init__(self, instances: Iterable[Instance], on_gone: Callable[[Instance], None]) -> None:
        self._on_gone = on_gone
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # stop() writes it
        self._poll = select.poll()
        self._poll.register(self._wake, select.POLLIN)
        self._watched: dict[int, Instance] = {}
        for inst in instances:
            fd = inst.conn.fileno()
            self._watched[fd] = inst
            self._poll.register(fd, 0)  # POLLHUP and POLLERR are reported without being asked for
        self._thread = threading.Thread(target=self._run, name="isostack-liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._watched:
            for fd, _events in self._poll.poll():
                if fd == self._wake:
                    return
                inst = self._watched.pop(fd, None)
                if inst is None:
                    continue
                self._poll.unregister(fd)  # a hang-up stays reported: watch it once
                try:
                    self._on_gone(inst)
                except Exception:  # the thread must go on watching the other instances
                    log.exception("failing the sockets of isostackd instance %d", inst.id)

    def stop(self) -> None:
        """End the thread (the Stack detaches)."""
        os.eventfd_write(self._wake, 1)
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        os.close(self._wake)

"""Liveness: noticing that an isostackd instance died, so that no call of the application waits for it forever.

Nothing in the shared memory says that the dispatcher is gone: a SIGKILLed isostackd leaves the rings as they
were, and a thread waiting for a completion or for credits would sleep on its doorbell forever.  What does tell
is the attach connection: the kernel hangs it up (POLLHUP) when the dispatcher's process goes.  One thread per
Stack sleeps in poll() on the attach connections of its instances (no CPU while they live) and hands a hung-up
instance to the Stack (Stack._instance_gone), which fails that instance's sockets with ECONNRESET and wakes
their waiters.  A thread rather than a check in each wait: a send that finds credits and an event loop asleep
on a socket's readiness fd never wait in the front-end, yet must learn it too.  The thread holds the Stack and
its instances weakly: a Stack dropped without close() is still collected (its connections close, isostackd
detaches it), and the finalizer ends the thread."""

from __future__ import annotations

import logging
import os
import select
import threading
import weakref
from collections.abc import Callable, Iterable

from .instance import Instance

log = logging.getLogger(__name__)


class Liveness:
    """The watcher thread of one Stack (see the module docstring); stop() before the connections are closed."""

    def __init__(self, instances: Iterable[Instance], on_gone: Callable[[Instance], None]) -> None:
        self._on_gone = weakref.WeakMethod(on_gone)  # a method of the Stack
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # stop() writes it
        self._poll = select.poll()
        self._poll.register(self._wake, select.POLLIN)
        self._watched: dict[int, weakref.ref[Instance]] = {}
        for inst in instances:
            fd = inst.conn.fileno()
            self._watched[fd] = weakref.ref(inst)
            self._poll.register(fd, 0)  # POLLHUP and POLLERR are reported without being asked for
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="isostack-liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._watched:
            for fd, _events in self._poll.poll():
                if fd == self._wake:
                    return
                ref = self._watched.pop(fd, None)
                if ref is None:
                    continue
                self._poll.unregister(fd)  # a hang-up stays reported: watch it once
                on_gone, inst = self._on_gone(), ref()
                if on_gone is None or inst is None:
                    return  # the Stack was collected
                try:
                    on_gone(inst)
                except Exception:  # the thread must go on watching the other instances
                    log.exception("failing the sockets of isostackd instance %d", inst.id)
                del on_gone, inst

    def stop(self) -> None:
        """End the thread (the Stack detaches, or was collected); once."""
        if self._stopped:
            return
        self._stopped = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        os.close(self._wake)

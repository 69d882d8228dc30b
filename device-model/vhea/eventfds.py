"""Kick, call and err eventfds shared with an untrusted front-end: signalled and drained without ever blocking.

Our own O_NONBLOCK would not help: the peer shares the file description and can clear it, and an eventfd
cannot be re-opened through /proc/self/fd to get a description of our own (ENXIO). So every read and write
is preceded by a poll with a zero timeout, and only eventfds are taken (a pipe's buffer fills and blocks).
What remains is a race a peer would have to win between our poll and our read or write (docs/device-model.md,
"Limits").
"""

from __future__ import annotations

import os
import select


def eventfd_is_ready(fd: int, events: int) -> bool:
    """Whether `fd` is ready for `events` right now (poll with a zero timeout: never blocks)."""
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(0))


def eventfd_signal(fd: int) -> bool:
    """Add 1 to an eventfd without ever blocking; False if it is not writable (counter full) or fails."""
    try:
        if not eventfd_is_ready(fd, select.POLLOUT):
            return False
        os.eventfd_write(fd, 1)
    except OSError:
        return False
    return True


def eventfd_drain(fd: int) -> None:
    """Reset an eventfd (a kick) without ever blocking, even if the peer made it blocking and read it first."""
    try:
        if eventfd_is_ready(fd, select.POLLIN):
            os.eventfd_read(fd)
    except OSError:
        pass


def is_eventfd(fd: int) -> bool:
    """Whether `fd` is an eventfd: kick, call and err fds must be (a pipe's buffer fills and blocks writes)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False

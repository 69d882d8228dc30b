"""One step between a byte ring and its kernel socket, and one notification post: the Python reference of the
C hot path (isostack/_dispatch.c), which isostackd runs where the extension loads.

Each step returns what the C one returns, so the data path (datapath.py) handles both alike:

* tx_drain -> (used, sent): used = bytes in the tx ring (0: no kernel call), -1 when the application's tail is
  impossible (sent is then that tail); sent = bytes the kernel took (C_TX_HEAD is published), 0 when it
  would block, -errno on an error.
* rx_fill -> (used, received): used = bytes in the rx ring, -1 when the application's head is impossible
  (received is then that head), == size when full (no kernel call); received > 0 bytes (C_RX_TAIL is
  published), 0 at EOF, -errno (-EAGAIN: nothing there).
* notify: queues.NotifyRing.post.

`lock` is the lock ablation's (--uncontended-locks): only this path takes it, so isostackd runs this path
whenever the ablation is on.
"""

from __future__ import annotations

import errno
import socket

from ..layout import C_RX_HEAD, C_RX_TAIL, C_TX_HEAD, C_TX_TAIL
from ..queues import NotifyRing, ring_views


def _errno(e: OSError) -> int:
    return -(e.errno or errno.EIO)


def tx_drain(kernel_socket: socket.socket, words: memoryview, buf: memoryview, control: int, ring_off: int,
             size: int, head: int, lock=None) -> tuple[int, int]:
    if lock:
        lock.acquire()
    tail = words[control + C_TX_TAIL]
    if lock:
        lock.release()
    used = tail - head
    if not 0 <= used <= size:
        return -1, tail
    if used == 0:
        return 0, 0
    views = ring_views(buf, ring_off, size, head, used)
    try:
        sent = kernel_socket.send(views[0]) if len(views) == 1 else kernel_socket.sendmsg(views)
    except BlockingIOError:
        sent = 0
    except OSError as e:
        sent = _errno(e)
    finally:
        for view in views:
            view.release()
    if sent >= 0:
        if lock:
            lock.acquire()
        words[control + C_TX_HEAD] = head + sent
        if lock:
            lock.release()
    return used, sent


def rx_fill(kernel_socket: socket.socket, words: memoryview, buf: memoryview, control: int, ring_off: int,
            size: int, tail: int) -> tuple[int, int]:
    head = words[control + C_RX_HEAD]
    used = tail - head
    if not 0 <= used <= size:
        return -1, head
    if used == size:
        return used, 0
    views = ring_views(buf, ring_off, size, tail, size - used)
    try:
        received = kernel_socket.recv_into(views[0]) if len(views) == 1 else kernel_socket.recvmsg_into(views)[0]
    except BlockingIOError:
        received = -errno.EAGAIN
    except OSError as e:
        received = _errno(e)
    finally:
        for view in views:
            view.release()
    if received > 0:
        words[control + C_RX_TAIL] = tail + received
    return used, received


def notify(ring: NotifyRing, sock: int, events: int, seq: int) -> bool:
    return ring.post(sock, events, seq)

"""The data path: tx rings drained into kernel sends, kernel receives filled into rx rings.

Both directions aggregate: everything an application queued goes out in one send/sendmsg straight from shared
memory, and one recv_into/recvmsg_into fills as much of the rx ring as is free.  A tx ring that is drained
stays "draining" (C_DRAINING set: the front-end posts no SEND for it) for TX_GRACE_LOOPS empty loops; the
flag is then released with the Dekker handshake described in queues.py.  Deferred shutdowns and lingering
closes end here, once their tx ring is empty.  The per-message steps (one drain, one fill) are C where the
extension loads (_dispatch.c) and Python otherwise (ringio.py, the reference); the decisions are here.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time

from .. import native
from ..layout import (
    C_DRAINING,
    C_RES_SEQ,
    C_RES_VAL,
    C_RX_HEAD,
    C_TX_TAIL,
    C_TX_WANT,
    EV_DONE,
    EV_EOF,
    EV_RX,
    ST_CLOSED,
    ST_CONNECTED,
    ST_EOF,
    ST_TX_SHUT,
    BadEntry,
    check_ring,
)
from . import ringio
from .kernel import EPOLL_IN, KernelSockets
from .notifications import Notifier
from .state import SharedState, SocketSlot
from .trace import RX_FILLED, TX_SEEN, TX_SENT

log = logging.getLogger("isostackd")

NATIVE = native.load_dispatch()  # the C steps (_dispatch.c), else ringio's Python reference

TX_GRACE_LOOPS = 64  # loops a drained tx ring stays "draining" before the flag is released
RX_REFILL = 4  # a full rx ring is received into again once 1/RX_REFILL of it is free
STREAK_MIN = 3  # loops in a row a tx ring must have data before it counts as a stream (coalescing naps)


def bad_index(what: str, head: int, tail: int, size: int) -> str:
    """check_ring's reason for a ring whose index the application made impossible."""
    try:
        check_ring(head, tail, size, what)
    except BadEntry as e:
        return e.reason
    raise AssertionError(f"{what} ring {head}..{tail} of {size} bytes is valid")


def os_error(err: int) -> OSError:
    return OSError(err, os.strerror(err))


class DataPath:
    """Moves bytes between the rings in shared memory and the kernel sockets."""

    def __init__(self, shared: SharedState, kernel_sockets: KernelSockets, notifier: Notifier):
        self.shared = shared
        self.kernel_sockets = kernel_sockets
        self.notifier = notifier

    # ------------------------------------------------------------------ tx

    def start_drain(self, slot: SocketSlot) -> None:
        slot.draining = True
        slot.idle_loops = 0
        slot.app.region.q[slot.control_word + C_DRAINING] = 1
        if slot.state & ST_CONNECTED and not slot.epoll_mask & select.EPOLLOUT:
            self.shared.tx_active.add(slot)

    def drain(self, slot: SocketSlot) -> bool:
        """Send what the tx ring holds in one kernel call; False when there was nothing to do."""
        shared = self.shared
        app = slot.app
        size = app.geometry.tx_size
        trace = shared.trace
        started = trace.clock() if trace is not None else 0
        if NATIVE is not None and not shared.lock:
            used, sent = NATIVE.tx_drain(slot.fd, slot.control_addr, slot.tx_addr, size, slot.tx_head)
        else:
            used, sent = ringio.tx_drain(slot.kernel_socket, app.region.q, app.region.buf, slot.control_word,
                                         slot.tx_offset, size, slot.tx_head, shared.lock)
        if used < 0:  # `sent` is the application's impossible tail
            self.notifier.fail(slot, errno.EFAULT, bad_index("tx", slot.tx_head, sent, size))
            return True
        if used == 0:
            slot.busy_streak = 0
            return self.tx_idle(slot)
        if trace is not None:
            trace(TX_SEEN, slot.index, started)
            trace(TX_SENT, slot.index)
        slot.busy_streak += 1
        if slot.busy_streak < STREAK_MIN or app.region.q[slot.control_word + C_TX_WANT]:
            shared.loop_latency = True  # not (yet) a stream, or its application waits for credits: no nap
        fill = used / size
        if fill > shared.loop_fill:
            shared.loop_fill = fill
        if sent < 0:
            self.notifier.fail(slot, -sent, f"send: {os_error(-sent)}")
            return True
        shared.stats["sends"] += 1
        shared.stats["send_bytes"] += sent
        slot.tx_head += sent
        slot.idle_loops = 0
        if sent:
            shared.tx_progress.append(slot)  # TX_WANT is read after the fence in ring_doorbells (Dekker)
        if sent < used:  # kernel buffer full: wait for EPOLLOUT instead of spinning
            shared.tx_active.discard(slot)
            shared.tx_blocked.add(slot)
            self.kernel_sockets.register(slot, slot.epoll_mask | select.EPOLLOUT)
        return True

    def tx_idle(self, slot: SocketSlot) -> bool:
        """The tx ring is empty: finish a deferred shutdown or close, or count the draining grace down."""
        if slot.shutdown_pos >= 0:
            slot.shutdown_pos = -1
            self.shutdown(slot, slot.shutdown_how, None)
        if slot.close_pos >= 0:
            self.finish_close(slot, slot.close_pos)
            return True
        slot.idle_loops += 1
        if slot.idle_loops < TX_GRACE_LOOPS:
            return False
        # Release the draining flag, then look again (Dekker with the front-end's "store tail; load flag").
        # With membarrier the front-end loads the flag with a plain load, so our side must fence *its* CPU.
        words = slot.app.region.q
        words[slot.control_word + C_DRAINING] = 0
        if self.shared.membarrier:
            native.membarrier()
        else:
            native.fence()
        if words[slot.control_word + C_TX_TAIL] != slot.tx_head and native.cas64(
                slot.app.region.base + (slot.control_word + C_DRAINING) * 8, 0, 1):
            slot.idle_loops = 0
            return True
        slot.draining = False
        self.shared.tx_active.discard(slot)
        return False

    def release_idle_rings(self) -> None:
        """Before a real sleep: end the draining grace of every tx ring that is empty now, so that the next
        send posts SEND (and kicks us) instead of waiting for a poll that will not come."""
        for slot in list(self.shared.tx_active):
            if slot.kernel_socket is None or slot.shutdown_pos >= 0 or slot.close_pos >= 0:
                continue
            if slot.app.region.q[slot.control_word + C_TX_TAIL] == slot.tx_head:
                slot.idle_loops = TX_GRACE_LOOPS
                self.tx_idle(slot)

    def writable(self, slot: SocketSlot) -> None:
        """EPOLLOUT on a connected socket: the kernel has room again, drain on."""
        self.kernel_sockets.register(slot, slot.epoll_mask & ~select.EPOLLOUT)
        self.shared.tx_blocked.discard(slot)
        if slot.draining:
            self.shared.tx_active.add(slot)

    # ------------------------------------------------------------------ shutdown and close after the tx ring

    def shutdown(self, slot: SocketSlot, how: int, pos: int | None) -> None:
        """Shut the kernel socket down; complete the command at pos (None: it was completed when it came)."""
        try:
            slot.kernel_socket.shutdown(how)
            value = 0
        except OSError as e:
            value = -(e.errno or errno.EIO)
        if how != socket.SHUT_RD:
            slot.set_state(slot.state | ST_TX_SHUT)
        if pos is not None:
            self.notifier.complete(slot, pos, value)
        elif value:
            log.info("app %d socket %d: deferred shutdown failed: %s", slot.app.id, slot.index, os.strerror(-value))

    def finish_close(self, slot: SocketSlot, pos: int) -> None:
        """Close the kernel socket and free the slot; the CLOSE at `pos` completes."""
        self.kernel_sockets.close(slot)
        words = slot.app.region.q
        words[slot.control_word + C_RES_VAL] = 0
        words[slot.control_word + C_RES_SEQ] = pos + 1
        dead = slot.dead
        slot.reset()
        slot.dead = dead
        slot.set_state(ST_CLOSED)
        self.notifier.post(slot, EV_DONE)
        fd = slot.app.readiness_fds.pop(slot.index, None)
        if fd is not None:
            os.close(fd)

    def expire_lingering_closes(self) -> None:
        now = time.monotonic()
        for slot in list(self.shared.closing):
            if now > slot.close_deadline:
                log.info("app %d socket %d: close linger expired with data unsent", slot.app.id, slot.index)
                self.finish_close(slot, slot.close_pos)

    # ------------------------------------------------------------------ rx

    def receive(self, slot: SocketSlot) -> bool:
        """Fill the rx ring from the kernel: as much as fits, in one call (aggregation)."""
        shared = self.shared
        app = slot.app
        size = app.geometry.rx_size
        if NATIVE is not None:
            used, received = NATIVE.rx_fill(slot.fd, slot.control_addr, slot.rx_addr, size, slot.rx_tail)
        else:
            used, received = ringio.rx_fill(slot.kernel_socket, app.region.q, app.region.buf, slot.control_word,
                                            slot.rx_offset, size, slot.rx_tail)
        if used < 0:  # `received` is the application's impossible head
            self.notifier.fail(slot, errno.EFAULT, bad_index("rx", received, slot.rx_tail, size))
            return True
        if used == size:
            if not slot.rx_stalled:
                slot.rx_stalled = True
                shared.rx_stalled.add(slot)
                self.kernel_sockets.register(slot, slot.epoll_mask & ~select.EPOLLIN & ~select.EPOLLRDHUP)
            return False
        if received == -errno.EAGAIN:
            return False
        if received < 0:
            self.notifier.fail(slot, -received, f"recv: {os_error(-received)}")
            return True
        shared.stats["recvs"] += 1
        if received == 0:
            slot.set_state(slot.state | ST_EOF)
            self.kernel_sockets.register(slot, slot.epoll_mask & ~select.EPOLLIN & ~select.EPOLLRDHUP)
            self.notifier.post(slot, EV_EOF)
            return True
        if shared.trace is not None:
            shared.trace(RX_FILLED, slot.index)
        shared.stats["recv_bytes"] += received
        slot.rx_tail += received
        if used == 0:
            self.notifier.post(slot, EV_RX)
        if slot.rx_stalled:
            slot.rx_stalled = False
            shared.rx_stalled.discard(slot)
        return True

    def unstall(self, slot: SocketSlot) -> bool:
        """A full rx ring got credits back: receive on, once a quarter of it is free (RX_REFILL) or its
        application has emptied it, so that a slow reader is refilled in large receives, not one per message it
        takes.  A ring its application emptied is someone waiting (latency: no nap after this loop)."""
        shared = self.shared
        if slot.kernel_socket is None:
            shared.rx_stalled.discard(slot)
            return False
        size = slot.app.geometry.rx_size
        free = size - (slot.rx_tail - slot.app.region.q[slot.control_word + C_RX_HEAD])
        if free < size // RX_REFILL:
            return False
        slot.rx_stalled = False
        shared.rx_stalled.discard(slot)
        self.kernel_sockets.register(slot, slot.epoll_mask | EPOLL_IN)
        if free >= size:  # emptied (or an impossible head, which the receive fails)
            shared.loop_latency = True
        fill = min(free / size, 1.0)  # how much of the ring its application took meanwhile (naps adapt to it)
        if fill > shared.loop_fill:
            shared.loop_fill = fill
        return True

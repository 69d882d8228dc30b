"""What the parts of the dispatcher share: one socket slot, one attached application, and the loop's own state.

The parts (kernel glue, attach, commands, data path, notifications, watchdog) are separate objects that all
work on these records; keeping the records here, below every part, is what lets the parts import nothing of
each other.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from ..attach import AttachError
from ..layout import C_STATE, H_MAGIC, H_PENDING, H_VERSION, MAGIC, R_DROPPED, R_HEAD, R_TAIL, VERSION, Geometry
from ..queues import CommandQueue, NotifyRing, Region
from .trace import Trace

U64 = (1 << 64) - 1


class StrandedSighting(NamedTuple):
    """When the watchdog first saw a tx ring that looked stranded, and the ring's tail then."""

    first_seen: float
    tx_tail: int


class SocketSlot:
    """Dispatcher-side state of one socket slot of one application."""

    __slots__ = (
        "app",
        "index",
        "control_word",
        "command_queue",
        "control_addr",
        "tx_addr",
        "rx_addr",
        "kernel_socket",
        "fd",
        "state",
        "tx_offset",
        "rx_offset",
        "tx_head",
        "rx_tail",
        "draining",
        "stranded",
        "send_owed",
        "idle_loops",
        "rx_stalled",
        "epoll_mask",
        "backlog",
        "backlog_max",
        "connect_pos",
        "close_pos",
        "shutdown_pos",
        "shutdown_how",
        "close_deadline",
        "dead",
        "busy_streak",
    )

    def __init__(self, app: Application, index: int):
        geometry = app.geometry
        self.app = app
        self.index = index
        self.control_word = geometry.control_off(index) // 8  # the socket's control page, as a u64 word index
        self.command_queue = CommandQueue(app.region, self.control_word, geometry.cmdq_off(index),
                                          geometry.cmdq_slots)
        self.tx_offset = geometry.tx_off(index)
        self.rx_offset = geometry.rx_off(index)
        base = app.region.base  # the addresses the C steps (_dispatch.c) work on
        self.control_addr = base + self.control_word * 8
        self.tx_addr = base + self.tx_offset
        self.rx_addr = base + self.rx_offset
        self.reset()
        self.dead = False  # command queue corrupt: nothing more is read from it

    def reset(self) -> None:
        self.kernel_socket: socket.socket | None = None
        self.fd = -1
        self.state = 0
        self.tx_head = 0
        self.rx_tail = 0
        self.draining = False
        self.idle_loops = 0  # loops the tx ring was found empty while draining (the draining grace)
        self.busy_streak = 0  # loops in a row the tx ring had data (a stream: coalescing naps pay off)
        self.rx_stalled = False
        self.epoll_mask = 0
        self.backlog: deque | None = None
        self.backlog_max = 0
        self.connect_pos = -1
        self.close_pos = -1
        self.stranded: StrandedSighting | None = None
        self.send_owed = -1  # tx tail of a ring adopted with the flag set and no SEND queued (late or lost SEND?)
        self.shutdown_pos = -1  # a SHUTDOWN deferred until the tx ring is drained
        self.shutdown_how = 0
        self.close_deadline = 0.0

    def set_state(self, state: int) -> None:
        self.state = state
        self.app.region.q[self.control_word + C_STATE] = state


class Application:
    """One attached application: its region, queues, doorbells and sockets."""

    def __init__(self, app_id: int, connection: socket.socket, geometry: Geometry, memfd: int,
                 doorbells: list[int], pid: int, uid: int = 0):
        self.id = app_id
        self.connection = connection
        self.geometry = geometry
        self.pid = pid
        self.uid = uid  # SO_PEERCRED at attach: the kernel sockets are created with it (kernel.socket_as)
        self.detached = False
        self.kernel_sockets = 0  # kernel sockets held for it: in its slots and accepted into its backlogs
        self.region = Region(memfd, geometry.total_size)
        os.close(memfd)
        self.doorbells = doorbells
        words = self.region.q
        if words[H_MAGIC] != MAGIC or words[H_VERSION] != VERSION:
            self.region.close()
            raise AttachError("shared memory header has a bad magic/version")
        self.ring_count = geometry.notif_rings
        self.ring_words = [geometry.ring_word(r) for r in range(self.ring_count)]
        # (header, entries) addresses of each ring, for the C post (_dispatch.c)
        self.ring_addrs = [(self.region.base + w * 8, self.region.base + geometry.ring_off(r))
                           for r, w in enumerate(self.ring_words)]
        self.rings = [NotifyRing(self.region, geometry.ring_off(r), geometry.notif_slots, w + R_HEAD, w + R_TAIL,
                                 w + R_DROPPED) for r, w in enumerate(self.ring_words)]
        self.sockets = [SocketSlot(self, i) for i in range(geometry.max_sockets)]
        self.pending_words = (geometry.max_sockets + 63) // 64
        self.pending_addr = self.region.base + H_PENDING * 8
        self.rings_posted: set[int] = set()  # rings posted to this loop: maybe ring their doorbells
        self.readiness_fds: dict[int, int] = {}  # socket slot -> the application's readiness eventfd for it
        self.command_credit_ns = 0  # its deficit round-robin credit (< 0: overspent), commands.take_commands
        self.command_cursor = 0  # the socket its next pass starts at, after one cut short by a budget


@dataclass
class SharedState:
    """The dispatcher's tables and per-loop flags, shared by all its parts."""

    epoll: select.epoll
    instance: int
    lock: threading.Lock | None  # the lock ablation (--uncontended-locks)
    membarrier: bool
    stats: dict
    apps: dict[int, Application] = field(default_factory=dict)  # by attach-connection fd
    by_fd: dict[int, SocketSlot] = field(default_factory=dict)  # kernel socket fd -> its slot
    tx_active: set[SocketSlot] = field(default_factory=set)  # tx rings drained every loop
    rx_stalled: set[SocketSlot] = field(default_factory=set)  # rx rings full: polled for credits
    tx_blocked: set[SocketSlot] = field(default_factory=set)  # tx rings waiting for EPOLLOUT (kernel buffer full)
    closing: set[SocketSlot] = field(default_factory=set)  # closes lingering until their tx ring is sent
    tx_progress: list[SocketSlot] = field(default_factory=list)  # tx head advanced this loop
    bad_ring: list[SocketSlot] = field(default_factory=list)  # named a missing notification ring: failed later
    watch_pending: set[SocketSlot] = field(default_factory=set)  # watched sockets posted to this loop
    limits: Limits = field(default_factory=lambda: Limits())
    failed_apps: list[tuple[Application, str]] = field(default_factory=list)  # to detach after this loop
    loop_latency: bool = False  # this loop did work someone waits for: no coalescing nap after it
    loop_fill: float = 0.0  # the fullest tx ring drained this loop (0..1)
    trace: Trace | None = None  # the hops' timestamps (ISOSTACKD_TRACE), else None


@dataclass(frozen=True)
class Limits:
    """What one application can make the dispatcher hold or spend; each limit is counted in stats when hit
    (docs/isostack.md, "Limits").  The defaults are far above what a well-behaved front-end uses."""

    max_apps: int = 64  # attached applications (attach_refused_limit)
    max_handshakes: int = 16  # connections accepted whose hello has not arrived (handshakes_dropped)
    # a hello must arrive within this (handshakes_timed_out); generous: a TCG guest under load stalls an
    # application for over a second, and a pending handshake costs one slot of max_handshakes, not a wait
    handshake_timeout_s: float = 10.0
    max_watches: int = 1024  # readiness eventfds per application (watch_limit)
    max_kernel_sockets: int = 1024  # per application: in slots + accepted, not yet taken (app_socket_limit)
    queue_budget: int = 64  # commands taken from one socket's queue per pass (budget_deferred)
    app_budget: int = 1024  # commands taken from one application's queues per pass (budget_deferred)
    # dispatcher time (µs) one application's commands may take per pass, deficit round-robin (time_deferred)
    app_budget_us: int = 50

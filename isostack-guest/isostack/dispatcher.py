"""isostackd: the IsoStack back-end dispatcher, one process pinned to a dedicated CPU.

It owns every kernel socket of the attached applications (non-blocking), and in one loop it
  1. polls its epoll set without blocking (attach socket, application connections, kernel sockets, kick fd),
  2. takes the commands of every socket whose bit is set in an application's pending bitmap,
  3. drains the tx rings of the sockets it is draining straight from shared memory into send/sendmsg
     (aggregation: everything the application queued goes in one call),
  4. fills rx rings with recv_into/recvmsg_into on memoryviews of shared memory,
  5. posts notifications to the socket's notification ring (one per application CPU: the ring the front-end
     names in the socket's C_NOTIF_RING, the CPU of the thread that last waited on it) and rings that ring's
     doorbell eventfd only if a thread announced in the ring's sleepers that it sleeps; otherwise it counts a
     saved doorbell (R_SAVED, per ring, in shared memory, and "saved" in its stats).
When nothing happened for its poll window it announces that it sleeps and blocks in epoll (the front-end kicks
it through an eventfd when it posts a command meanwhile).  The window adapts like KVM's halt polling, up to
--busy-poll-us: it grows while work comes back soon after a sleep and shrinks when sleeps are long (in a TCG
guest an RR round trip outlasts it: polling would only burn the vCPU, and with it a host core the peer needs).
Before sleeping it ends the draining grace of the empty tx rings, so the next send posts SEND and kicks it.
Between drains of tx rings that an application keeps filling it naps (adaptive, --nap-max-us) so that one
kernel send takes many messages (see run()).

Kernel busy polling (what puts the NIC's receive processing into this loop, on this CPU, instead of in the
softirq after an interrupt): --so-busy-poll-us N (default 50) sets SO_BUSY_POLL on every kernel socket, so a
recv that finds the socket empty first polls the device queue the flow arrives on (one NAPI poll: our sockets
are non-blocking); --epoll-busy-poll-us N sets the net.core.busy_poll sysctl while isostackd runs (restored on
exit), which makes epoll_wait poll the NAPI context of our sockets before it reports "nothing".  Per-epoll
parameters (EPIOCSPARAMS) exist only from Linux 6.9 and the guests run 6.1, so the sysctl is the only epoll
knob there; it is global, hence off by default (-1) and an explicit choice of the experiment, and only
instance 0 writes and restores it (another instance restoring it at its exit would switch it off under the
others); the other instances report the value they see.  SO_BUSY_POLL
above net.core.busy_read needs CAP_NET_ADMIN (isostackd runs as root in the guests); failures are counted,
not fatal.  The settings and counts are in the stats and in every attach reply ("busy_poll").

Instances: `--instance K --cpu C --queues q,..` runs one of several dispatchers, each on its own core and
owning the NIC queue pairs whose IRQs/RPS/XPS it places on that core (attach socket: attach.instance_path).
A front-end attaches to every instance; each socket lives in exactly one instance's shared memory, which is
how the back-end tells the front-end who owns it (C_OWNER in the control page repeats it, C_RX_CPU says
which CPU the kernel last received the connection's packets on).
  * Passive opens: the front-end listens on every instance, in instance order, each with SO_REUSEPORT on
    the same address, so the kernel has one reuseport group whose i-th member is instance i.  The LISTEN
    entry carries the members' CPUs and which member owns which rx queue; the dispatcher attaches a classic
    BPF program to the group (SO_ATTACH_REUSEPORT_CBPF, Linux >= 4.5) that returns the member owning
    skb->queue_mapping (the rx queue virtio-net recorded: exactly "the queue the SYN arrived on"), else the
    member whose CPU is processing the SYN (SKF_AD_CPU: the CPU its queue's IRQ/RPS targets), else an
    out-of-range index, which makes the kernel fall back to its hash.  Measured in a guest (6.1, 2 queues):
    virtio-net does not record the rx queue there (a packet-socket filter on SKF_AD_QUEUE sees 0 for every
    frame), so the CPU rule decides; with each instance's queue IRQs and RPS on its CPU (placement), 16 of 16
    connections from the other guest were accepted by the instance owning their predicted rx queue.
    SO_INCOMING_CPU alone would be simpler but mainline 6.1's reuseport group ignores it (fixed in 6.2 by
    b261eda84ec1, "soreuseport: Fix socket selection for SO_INCOMING_CPU"), and an eBPF SOCKARRAY would need
    bpf(2) from every instance.
  * Active opens: the front-end binds a source port whose Toeplitz hash maps to one of the instance's
    queues (rss.py, from the classifier settings the testbed puts into the guest) before connecting.

Producers are untrusted: every entry and every index an application controls is validated; a bad one fails
that socket (state ST_ERROR + errno, notification EV_ERR) and nothing else.  An application's sockets and
memory are released as soon as its attach connection closes.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections import deque

from . import native, placement
from .attach import (
    DEFAULT_SOCKET,
    MAX_INSTANCES,
    MAX_MESSAGE,
    AttachError,
    encode_reply,
    instance_path,
    parse_hello,
    parse_watch,
)
from .layout import (
    C_ADDR_FAMILY,
    C_ADDR_IP0,
    C_ADDR_IP1,
    C_ADDR_PORT,
    C_DRAINING,
    C_ERR,
    C_NOTIF_RING,
    C_OPTVAL,
    C_OWNER,
    C_RES_SEQ,
    C_RES_VAL,
    C_RX_CPU,
    C_RX_HEAD,
    C_RX_TAIL,
    C_STATE,
    C_TX_HEAD,
    C_TX_TAIL,
    C_TX_WANT,
    C_WATCH_ARMED,
    EV_ACCEPT,
    EV_DONE,
    EV_EOF,
    EV_ERR,
    EV_RX,
    EV_TX,
    H_DISP_SLEEPING,
    H_MAGIC,
    H_PENDING,
    H_VERSION,
    MAGIC,
    MAX_RINGS,
    OP_NAMES,
    R_DROPPED,
    R_HEAD,
    R_RUNG,
    R_SAVED,
    R_SLEEPERS,
    R_TAIL,
    ST_ACCEPTABLE,
    ST_CLOSED,
    ST_CONNECTED,
    ST_CONNECTING,
    ST_EOF,
    ST_ERROR,
    ST_LISTENING,
    ST_OPEN,
    ST_TX_SHUT,
    VERSION,
    BadEntry,
    Geometry,
    Op,
    addr_words,
    check_ring,
    decode_command,
    encode_addr,
    listen_group,
)
from .queues import CORRUPT, EMPTY, CommandQueue, NotifyRing, Region, ring_views

log = logging.getLogger("isostackd")

U64 = (1 << 64) - 1
TX_GRACE_LOOPS = 64  # loops a drained tx ring stays "draining" before the flag is released
# Coalescing naps (see Dispatcher.run): after a loop whose only work was draining tx rings that an application
# keeps filling (each had data in STREAK_MIN loops in a row), wait in epoll (kernel events and commands still
# wake us at once) so that the next drain takes many messages in one kernel send.  The nap adapts: it doubles
# while a drain after a nap finds its ring under NAP_LOW full and halves when one finds it over NAP_HIGH full
# or an application waits for credits; within [nap_min, nap_max] (--nap-max-us).
STREAK_MIN = 3
NAP_LOW, NAP_HIGH = 1 / 8, 1 / 2
NAP_MIN_S = 20e-6
MAX_BACKLOG = 1024
CLOSE_LINGER_S = 5.0
# Stranded tx rings (see Dispatcher._check_stranded): a ring holding data that nobody will drain: the draining
# flag is set but no SEND is queued and we do not drain it (a front-end won the flag and never posted, e.g. its
# _post failed), or we drain it but track neither the ring nor its EPOLLOUT.  Looked for at most every
# STRANDED_CHECK_S while idle; adopted once the same state held for STRANDED_S (a front-end between its xchg
# and its SEND is microseconds away from posting, even preempted far less than this).
STRANDED_CHECK_S = 0.25
STRANDED_S = 0.5
EPOLL_IN = select.EPOLLIN | select.EPOLLRDHUP
SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 2)


SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)
SO_BUSY_POLL = getattr(socket, "SO_BUSY_POLL", 46)
BUSY_POLL_SYSCTL = "sys/net/core/busy_poll"
SO_ATTACH_REUSEPORT_CBPF = 51
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SKF_AD_OFF, SKF_AD_QUEUE, SKF_AD_CPU = -0x1000, 16, 36
SOCK_FILTER = "<HBBI"


def reuseport_program(cpus: list[int], owners: dict[int, int]) -> list[tuple[int, int, int, int]]:
    """Classic BPF for a reuseport group: the index of the member owning the SYN's rx queue, else of the
    member on whose CPU the SYN is processed, else 0xffffffff (out of range: the kernel hashes)."""
    prog = [(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_QUEUE) & 0xFFFFFFFF)]
    for q, member in sorted(owners.items()):
        prog += [(BPF_JEQ_K, 0, 1, q + 1), (BPF_RET_K, 0, 0, member)]  # queue_mapping is rx queue + 1
    prog.append((BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_CPU) & 0xFFFFFFFF))
    for member, cpu in enumerate(cpus):
        prog += [(BPF_JEQ_K, 0, 1, cpu), (BPF_RET_K, 0, 0, member)]
    prog.append((BPF_RET_K, 0, 0, 0xFFFFFFFF))
    return prog


def attach_reuseport_program(k: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """setsockopt(SO_ATTACH_REUSEPORT_CBPF): struct sock_fprog {u16 len; struct sock_filter *filter}."""
    import ctypes
    import struct

    filt = ctypes.create_string_buffer(b"".join(struct.pack(SOCK_FILTER, *insn) for insn in prog))
    fprog = struct.pack("<H6xQ", len(prog), ctypes.addressof(filt))
    k.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def incoming_cpu(k: socket.socket) -> int:
    try:
        return k.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU)
    except OSError:
        return -1


class NullLock:
    """Stands in for threading.Lock when the lock ablation is off (never called on the hot path)."""


class Sock:
    """Dispatcher-side state of one socket slot of one application."""

    __slots__ = (
        "app",
        "idx",
        "cw",
        "cmdq",
        "k",
        "fd",
        "state",
        "tx_off",
        "rx_off",
        "tx_head",
        "rx_tail",
        "draining",
        "stranded",
        "send_owed",
        "idle",
        "rx_stalled",
        "emask",
        "backlog",
        "backlog_max",
        "connect_pos",
        "close_pos",
        "shut_pending",
        "shut_how",
        "close_deadline",
        "dead",
        "streak",
    )

    def __init__(self, app: App, idx: int):
        g = app.geometry
        self.app = app
        self.idx = idx
        self.cw = g.control_off(idx) // 8  # control page, u64 word index
        self.cmdq = CommandQueue(app.region, self.cw, g.cmdq_off(idx), g.cmdq_slots)
        self.tx_off = g.tx_off(idx)
        self.rx_off = g.rx_off(idx)
        self.reset()
        self.dead = False  # queue corrupt: nothing more is read from it

    def reset(self) -> None:
        self.k: socket.socket | None = None
        self.fd = -1
        self.state = 0
        self.tx_head = 0
        self.rx_tail = 0
        self.draining = False
        self.idle = 0
        self.streak = 0
        self.rx_stalled = False
        self.emask = 0
        self.backlog: deque | None = None
        self.backlog_max = 0
        self.connect_pos = -1
        self.close_pos = -1
        self.stranded: tuple[float, int] | None = None  # (first seen, tx tail then): _check_stranded
        self.send_owed = -1  # tx tail of a ring adopted with the flag set and no SEND queued (late or lost SEND?)
        self.shut_pending = -1
        self.shut_how = 0
        self.close_deadline = 0.0


class App:
    """One attached application: its region, queues, doorbell and sockets."""

    def __init__(self, app_id: int, conn: socket.socket, geometry: Geometry, memfd: int, doorbells: list[int],
                 pid: int):
        self.id = app_id
        self.conn = conn
        self.geometry = geometry
        self.pid = pid
        self.region = Region(memfd, geometry.total_size)
        os.close(memfd)
        self.doorbells = doorbells
        q = self.region.q
        if q[H_MAGIC] != MAGIC or q[H_VERSION] != VERSION:
            self.region.close()
            raise AttachError("shared memory header has a bad magic/version")
        self.nrings = geometry.notif_rings
        self.ring_words = [geometry.ring_word(r) for r in range(self.nrings)]
        self.rings = [NotifyRing(self.region, geometry.ring_off(r), geometry.notif_slots, w + R_HEAD, w + R_TAIL,
                                 w + R_DROPPED) for r, w in enumerate(self.ring_words)]
        self.socks = [Sock(self, i) for i in range(geometry.max_sockets)]
        self.pending_words = (geometry.max_sockets + 63) // 64
        self.pending_addr = self.region.base + H_PENDING * 8
        self.dirty: set[int] = set()  # rings posted to this loop: maybe ring their doorbells
        self.watch: dict[int, int] = {}  # socket slot -> the application's readiness eventfd for it


class Dispatcher:
    def __init__(self, path: str = DEFAULT_SOCKET, cpu: int | None = None, busy_poll_us: int = 1000,
                 uncontended_locks: bool = False, sleep_ms: int = 100, instance: int = 0,
                 queues: set[int] | None = None, so_busy_poll_us: int = 50, epoll_busy_poll_us: int = -1,
                 nap_max_us: int = 1000, adaptive_poll: bool = True,
                 proc_root: str = "/proc"):
        self.path = path
        self.cpu = cpu
        self.instance = instance
        self.queues = None if queues is None else sorted(queues)
        self.busy_poll_s = busy_poll_us / 1e6 if busy_poll_us >= 0 else None
        self.poll_s = self.busy_poll_s or 0.0  # the adaptive busy-poll window (_adapt_poll)
        self.adaptive_poll = adaptive_poll
        self.nap_max_s = max(nap_max_us, 0) / 1e6
        self.nap_s = min(NAP_MIN_S * 4, self.nap_max_s)
        self.loop_latency = False
        self.loop_fill = 0.0
        self.sleep_ms = sleep_ms
        self.lock = threading.Lock() if uncontended_locks else None
        self.membarrier = native.membarrier_supported()
        self.apps: dict[int, App] = {}  # by attach-connection fd
        self.by_fd: dict[int, Sock] = {}  # kernel socket fd -> Sock
        self.tx_active: set[Sock] = set()
        self.rx_stalled: set[Sock] = set()
        self.closing: set[Sock] = set()
        self.tx_progress: list[Sock] = []  # tx head advanced this loop
        self.stranded_checked = 0.0  # monotonic time of the last _check_stranded
        self.bad_ring: list[Sock] = []  # named a notification ring that does not exist: failed after the loop
        self.watch_pending: set[Sock] = set()  # watched sockets posted to this loop
        self.next_app = 1
        self.running = True
        self.stats = {"loops": 0, "commands": 0, "sends": 0, "send_bytes": 0, "recvs": 0, "recv_bytes": 0,
                      "bad_entries": 0, "sleeps": 0, "naps": 0, "poll_us": busy_poll_us,
                      "nap_us": 0, "rung": 0, "saved": 0, "apps_attached": 0, "apps_detached": 0,
                      "reuseport_programs": 0, "so_busy_poll_us": so_busy_poll_us, "so_busy_poll_set": 0,
                      "so_busy_poll_failed": 0, "epoll_busy_poll_us": None, "watch_writes": 0, "watch_saved": 0,
                      "tx_stranded": 0, "tx_stranded_late_send": 0,
                      "bad_messages": 0}
        self.so_busy_poll_us = so_busy_poll_us
        self.sysctl_path = os.path.join(proc_root, BUSY_POLL_SYSCTL)
        self.sysctl_saved: str | None = None
        if epoll_busy_poll_us >= 0:
            if instance == 0:
                self._set_epoll_busy_poll(epoll_busy_poll_us)
            else:
                self.stats["epoll_busy_poll_us"] = self._read_sysctl()
                log.info("net.core.busy_poll is %s (instance 0 sets it)", self.stats["epoll_busy_poll_us"])
        self.epoll = select.epoll()
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self.kick, select.EPOLLIN)
        self.listener = self._listen(path)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _listen(path: str) -> socket.socket:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise SystemExit(f"isostackd: {path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale
            else:
                probe.close()
                raise SystemExit(f"isostackd: another isostackd is listening on {path}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        s.bind(path)
        os.chmod(path, 0o666)
        s.listen(64)
        return s

    def _set_epoll_busy_poll(self, us: int) -> None:
        """net.core.busy_poll = us (remembering the old value for close()); the stats say what it is."""
        try:
            with open(self.sysctl_path) as f:
                old = f.read().strip()
            with open(self.sysctl_path, "w") as f:
                f.write(f"{us}\n")
            with open(self.sysctl_path) as f:
                self.stats["epoll_busy_poll_us"] = int(f.read().strip())
            self.sysctl_saved = old
            log.info("net.core.busy_poll = %d (was %s)", us, old)
        except (OSError, ValueError) as e:
            log.warning("cannot set net.core.busy_poll to %d: %s", us, e)

    def _read_sysctl(self) -> int | None:
        try:
            with open(self.sysctl_path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _busy_poll_socket(self, k: socket.socket) -> None:
        if self.so_busy_poll_us <= 0:
            return
        try:
            k.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, self.so_busy_poll_us)
            self.stats["so_busy_poll_set"] += 1
        except OSError:
            self.stats["so_busy_poll_failed"] += 1

    def close(self) -> None:
        if self.sysctl_saved is not None:
            try:
                with open(self.sysctl_path, "w") as f:
                    f.write(self.sysctl_saved + "\n")
            except OSError as e:
                log.warning("cannot restore net.core.busy_poll: %s", e)
            self.sysctl_saved = None
        for app in list(self.apps.values()):
            self._detach(app, "dispatcher stopping")
        self.epoll.close()
        self.listener.close()
        os.close(self.kick)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # ------------------------------------------------------------------ attach / detach

    def _accept_app(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(1.0)
        fds: list[int] = []
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 1 + MAX_RINGS)
            hello = parse_hello(data, len(fds))
            memfd, doorbells = fds[0], fds[1:]
            self._check_fds(memfd, doorbells, hello.geometry)
            app = App(self.next_app, conn, hello.geometry, memfd, doorbells, hello.pid)
            fds = []
        except (AttachError, OSError, ValueError) as e:
            log.warning("attach refused: %s", e)
            try:
                conn.send(encode_reply(type="error", message=str(e)))
            except OSError:
                pass
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        self.next_app += 1
        socket.send_fds(conn, [encode_reply(type="attached", app=app.id, cpu=self.cpu, pid=os.getpid(),
                                            locks=self.lock is not None, membarrier=self.membarrier,
                                            instance=self.instance, queues=self.queues,
                                            busy_poll={"socket_us": self.so_busy_poll_us,
                                                       "epoll_us": self.stats["epoll_busy_poll_us"]})],
                         [self.kick])
        conn.setblocking(False)
        self.apps[conn.fileno()] = app
        self.epoll.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        self.stats["apps_attached"] += 1
        log.info("app %d attached (pid %s, %d sockets, %d bytes shared)", app.id, app.pid,
                 app.geometry.max_sockets, app.geometry.total_size)

    @staticmethod
    def _check_fds(memfd: int, doorbells: list[int], geometry: Geometry) -> None:
        st = os.fstat(memfd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < geometry.total_size:
            raise AttachError(f"shared memory is {st.st_size} bytes, geometry needs {geometry.total_size}")
        seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        if not seals & SEAL_SHRINK:
            raise AttachError("shared memory must be a memfd sealed with F_SEAL_SHRINK")
        for doorbell in doorbells:
            if os.readlink(f"/proc/self/fd/{doorbell}") != "anon_inode:[eventfd]":
                raise AttachError("doorbell is not an eventfd")
            os.set_blocking(doorbell, False)

    def _detach(self, app: App, why: str) -> None:
        """Close the application's kernel sockets and release its memory (called when its connection ends)."""
        fd = app.conn.fileno()
        self.apps.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        n = 0
        for s in app.socks:
            if s.k is not None or s.backlog:
                n += 1
            self._close_kernel(s)
        app.conn.close()
        for fd in [*app.doorbells, *app.watch.values()]:
            os.close(fd)
        app.watch.clear()
        app.region.close()
        self.stats["apps_detached"] += 1
        log.info("app %d detached (%s): %d sockets closed", app.id, why, n)

    # ------------------------------------------------------------------ socket state helpers

    def _set_state(self, s: Sock, state: int) -> None:
        s.state = state
        s.app.region.q[s.cw + C_STATE] = state

    def _post(self, s: Sock, events: int) -> None:
        """Post to the ring the front-end chose for this socket.  An impossible choice goes to ring 0 and fails
        the socket at the end of this loop (failing it here would close the kernel socket under the caller)."""
        app = s.app
        q = app.region.q
        r = q[s.cw + C_NOTIF_RING]
        if r >= app.nrings:
            r = 0
            if not s.state & ST_ERROR:
                self.bad_ring.append(s)
        app.rings[r].post(s.idx, events, q[s.cw + C_RES_SEQ])
        app.dirty.add(r)
        if s.idx in app.watch:  # a selector/asyncio user: its eventfd, if armed, after the fence (_doorbells)
            self.watch_pending.add(s)

    def _complete(self, s: Sock, pos: int, val: int) -> None:
        q = s.app.region.q
        q[s.cw + C_RES_VAL] = val & U64
        q[s.cw + C_RES_SEQ] = pos + 1
        self._post(s, EV_DONE)

    def _fail(self, s: Sock, err: int, reason: str) -> None:
        """Fail one socket: kernel socket closed, error to its owner; every other socket is untouched."""
        log.warning("app %d socket %d failed: %s", s.app.id, s.idx, reason)
        self._close_kernel(s)
        q = s.app.region.q
        q[s.cw + C_ERR] = err
        q[s.cw + C_RES_VAL] = -err & U64
        q[s.cw + C_RES_SEQ] = s.cmdq.head
        self._set_state(s, (s.state | ST_ERROR) & ~ST_CLOSED)
        self._post(s, EV_ERR)

    def _register(self, s: Sock, mask: int) -> None:
        if s.k is None or mask == s.emask:
            return
        if s.emask == 0:
            self.epoll.register(s.fd, mask)
        elif mask == 0:
            self.epoll.unregister(s.fd)
        else:
            self.epoll.modify(s.fd, mask)
        s.emask = mask

    def _close_kernel(self, s: Sock) -> None:
        if s.k is not None:
            if s.emask:
                try:
                    self.epoll.unregister(s.fd)
                except (OSError, ValueError):
                    pass
            self.by_fd.pop(s.fd, None)
            s.k.close()
            s.k = None
            s.emask = 0
        if s.backlog:
            for k in s.backlog:
                k.close()
            s.backlog.clear()
        self.tx_active.discard(s)
        self.rx_stalled.discard(s)
        self.closing.discard(s)

    @staticmethod
    def _check_start(s: Sock) -> None:
        """The front-end's tx tail and rx head where a new connection's rings start: our indices begin there
        and only ever grow by bytes moved, so starting below 2**63 keeps them clear of 2**64 forever."""
        q = s.app.region.q
        for word, what in ((C_TX_TAIL, "tx tail"), (C_RX_HEAD, "rx head")):
            if q[s.cw + word] >= 1 << 63:
                raise BadEntry(errno.EFAULT, f"{what} {q[s.cw + word]} where a socket starts")

    def _adopt(self, s: Sock, k: socket.socket, state: int) -> None:
        """Bind a kernel socket to a free slot; ring indices restart where the front-end's are."""
        q = s.app.region.q
        k.setblocking(False)
        self._busy_poll_socket(k)
        s.k, s.fd = k, k.fileno()
        self.by_fd[s.fd] = s
        s.tx_head = q[s.cw + C_TX_TAIL]
        s.rx_tail = q[s.cw + C_RX_HEAD]
        q[s.cw + C_TX_HEAD] = s.tx_head
        q[s.cw + C_RX_TAIL] = s.rx_tail
        q[s.cw + C_DRAINING] = 0
        q[s.cw + C_TX_WANT] = 0
        q[s.cw + C_ERR] = 0
        q[s.cw + C_OWNER] = self.instance
        q[s.cw + C_RX_CPU] = incoming_cpu(k) & U64
        self._set_state(s, state)

    # ------------------------------------------------------------------ commands

    def _commands(self, app: App) -> bool:
        q = app.region.q
        did = False
        for w in range(app.pending_words):
            if not q[H_PENDING + w]:
                continue
            bits = native.xchg64(app.pending_addr + w * 8, 0)
            while bits:
                low = bits & -bits
                bits ^= low
                idx = w * 64 + low.bit_length() - 1
                if idx < len(app.socks):
                    did |= self._socket_commands(app.socks[idx])
        return did

    def _socket_commands(self, s: Sock) -> bool:
        did = False
        cmdq = s.cmdq
        lock = self.lock
        while not s.dead:
            if lock:
                lock.acquire()
            state, view = cmdq.poll()
            if state == EMPTY:
                if lock:
                    lock.release()
                return did
            if state == CORRUPT:
                if lock:
                    lock.release()
                s.dead = True
                self.stats["bad_entries"] += 1
                self._fail(s, errno.EPROTO, f"command queue slot {cmdq.head} has a corrupt sequence number")
                return True
            try:
                cmd = decode_command(view, cmdq.head, s.idx, s.app.geometry)
            except BadEntry as e:
                view.release()
                cmdq.release()
                if lock:
                    lock.release()
                self.stats["bad_entries"] += 1
                self._fail(s, e.err, e.reason)
                did = True
                continue
            view.release()
            cmdq.release()
            if lock:
                lock.release()
            self.stats["commands"] += 1
            did = True
            try:
                self._execute(s, cmd)
            except BadEntry as e:
                self.stats["bad_entries"] += 1
                self._fail(s, e.err, e.reason)
        return did

    def _execute(self, s: Sock, cmd) -> None:
        op = cmd.op
        if log.isEnabledFor(logging.DEBUG):
            log.debug("app %d sock %d: %s %s", s.app.id, s.idx, OP_NAMES[op], cmd)
        if op == Op.CLOSE:
            self._op_close(s, cmd.pos)
            return
        if s.state & ST_ERROR:
            self._complete(s, cmd.pos, -(s.app.region.q[s.cw + C_ERR] or errno.EBADF))
            return
        if op == Op.SOCKET:
            if s.k is not None or (s.state and not s.state & ST_CLOSED):
                raise BadEntry(errno.EBADF, "SOCKET on a slot that is in use")
            self._check_start(s)
            k = socket.socket(cmd.a, cmd.b)
            self._adopt(s, k, ST_OPEN)
            self._complete(s, cmd.pos, 0)
            return
        if s.k is None:
            raise BadEntry(errno.EBADF, f"{OP_NAMES[op]} on a socket that is not open")
        if op == Op.SEND:
            self._op_send(s, cmd.a)
            return
        try:
            if op == Op.BIND:
                s.k.bind((*self._addr(s, cmd),))
                self._complete(s, cmd.pos, 0)
            elif op == Op.LISTEN:
                s.k.listen(cmd.a)
                if cmd.b:  # one member of a multi-instance reuseport group: steer SYNs to their queue's owner
                    attach_reuseport_program(s.k, reuseport_program(*listen_group(cmd.b, cmd.c, cmd.ip)))
                    self.stats["reuseport_programs"] += 1
                s.backlog = deque()
                s.backlog_max = max(16, min(cmd.a, MAX_BACKLOG))
                self._set_state(s, s.state | ST_LISTENING)
                self._register(s, select.EPOLLIN)
                self._complete(s, cmd.pos, 0)
            elif op == Op.ACCEPT:
                self._op_accept(s, cmd)
            elif op == Op.CONNECT:
                self._op_connect(s, cmd)
            elif op == Op.SHUTDOWN:
                self._op_shutdown(s, cmd)
            elif op == Op.SETSOCKOPT:
                s.k.setsockopt(cmd.a, cmd.b, cmd.c)
                self._complete(s, cmd.pos, 0)
            elif op == Op.GETSOCKOPT:
                s.app.region.q[s.cw + C_OPTVAL] = s.k.getsockopt(cmd.a, cmd.b) & U64
                self._complete(s, cmd.pos, 0)
            elif op in (Op.GETSOCKNAME, Op.GETPEERNAME):
                addr = s.k.getsockname() if op == Op.GETSOCKNAME else s.k.getpeername()
                self._store_addr(s, addr)
                self._complete(s, cmd.pos, 0)
        except OSError as e:
            self._complete(s, cmd.pos, -(e.errno or errno.EIO))

    @staticmethod
    def _addr(s: Sock, cmd) -> tuple:
        from .layout import decode_addr

        if cmd.a != s.k.family:
            raise BadEntry(errno.EAFNOSUPPORT, f"address family {cmd.a} on a family {s.k.family} socket")
        return decode_addr(cmd.a, cmd.b, cmd.ip)

    def _store_addr(self, s: Sock, addr: tuple) -> None:
        fam = s.k.family if s.k is not None else socket.AF_INET
        port, ip = encode_addr(fam, addr)
        f, p, lo, hi = addr_words(fam, port, ip)
        q = s.app.region.q
        q[s.cw + C_ADDR_FAMILY], q[s.cw + C_ADDR_PORT], q[s.cw + C_ADDR_IP0], q[s.cw + C_ADDR_IP1] = f, p, lo, hi

    def _op_connect(self, s: Sock, cmd) -> None:
        if s.state & (ST_CONNECTED | ST_CONNECTING | ST_LISTENING):
            self._complete(s, cmd.pos, -errno.EISCONN)
            return
        err = s.k.connect_ex(self._addr(s, cmd))
        if err == 0:
            self._connected(s, cmd.pos)
        elif err == errno.EINPROGRESS:
            s.connect_pos = cmd.pos
            self._set_state(s, s.state | ST_CONNECTING)
            self._register(s, select.EPOLLOUT)
        else:
            self._complete(s, cmd.pos, -err)

    def _connected(self, s: Sock, pos: int) -> None:
        s.app.region.q[s.cw + C_RX_CPU] = incoming_cpu(s.k) & U64
        self._set_state(s, (s.state & ~ST_CONNECTING) | ST_CONNECTED)
        self._register(s, EPOLL_IN)
        self._complete(s, pos, 0)
        if s.app.region.q[s.cw + C_TX_TAIL] != s.tx_head:  # data queued while connecting
            self._start_drain(s)

    def _op_accept(self, s: Sock, cmd) -> None:
        if not s.state & ST_LISTENING:
            self._complete(s, cmd.pos, -errno.EINVAL)
            return
        new = s.app.socks[cmd.a]
        if new.k is not None or new.dead or (new.state and not new.state & ST_CLOSED):
            raise BadEntry(errno.EBADF, f"ACCEPT into socket {cmd.a}, which is in use")
        self._fill_backlog(s)
        if not s.backlog:
            self._complete(s, cmd.pos, -errno.EAGAIN)
            return
        try:
            self._check_start(new)
        except BadEntry as e:  # the slot to accept into is unusable: fail it, the connection stays queued
            self._fail(new, e.err, e.reason)
            self._complete(s, cmd.pos, -e.err)
            return
        k, addr = s.backlog.popleft()
        self._adopt(new, k, ST_OPEN | ST_CONNECTED)
        self._store_addr(new, addr)
        self._register(new, EPOLL_IN)
        if not s.backlog:
            self._set_state(s, s.state & ~ST_ACCEPTABLE)
            self._register(s, select.EPOLLIN)
        self._complete(s, cmd.pos, cmd.a)

    def _fill_backlog(self, s: Sock) -> None:
        while len(s.backlog) < s.backlog_max:
            try:
                s.backlog.append(s.k.accept())
            except BlockingIOError:
                break
            except OSError as e:
                log.info("accept on app %d socket %d: %s", s.app.id, s.idx, e)
                break
        if s.backlog:
            if not s.state & ST_ACCEPTABLE:
                self._set_state(s, s.state | ST_ACCEPTABLE)
                self._post(s, EV_ACCEPT)
            if len(s.backlog) >= s.backlog_max:
                self._register(s, 0)  # stop the level-triggered wake-ups until the app accepts

    def _op_shutdown(self, s: Sock, cmd) -> None:
        """As the kernel's shutdown(SHUT_WR): it returns at once and the FIN follows the queued data.  With data
        still in the tx ring the command completes now (further sends fail: ST_TX_SHUT) and the kernel socket is
        shut down once the ring is drained (_tx_idle); the application does not wait for the drain, which on a
        slow connection can take long."""
        if cmd.a in (socket.SHUT_WR, socket.SHUT_RDWR) and s.app.region.q[s.cw + C_TX_TAIL] != s.tx_head:
            s.shut_pending = cmd.pos
            s.shut_how = cmd.a
            self._set_state(s, s.state | ST_TX_SHUT)
            self._complete(s, cmd.pos, 0)
            self._start_drain(s)
            return
        self._do_shutdown(s, cmd.a, cmd.pos)

    def _do_shutdown(self, s: Sock, how: int, pos: int | None) -> None:
        """Shut the kernel socket down; complete the command at pos (None: it was completed when it came)."""
        try:
            s.k.shutdown(how)
            val = 0
        except OSError as e:
            val = -(e.errno or errno.EIO)
        if how != socket.SHUT_RD:
            self._set_state(s, s.state | ST_TX_SHUT)
        if pos is not None:
            self._complete(s, pos, val)
        elif val:
            log.info("app %d socket %d: deferred shutdown failed: %s", s.app.id, s.idx, os.strerror(-val))

    def _op_close(self, s: Sock, pos: int) -> None:
        """Graceful close: queued tx bytes still go out (bounded by CLOSE_LINGER_S), then the slot is free."""
        if s.k is not None and s.state & ST_CONNECTED and not s.state & ST_ERROR:
            try:
                used = check_ring(s.tx_head, s.app.region.q[s.cw + C_TX_TAIL], s.app.geometry.tx_size, "tx")
            except BadEntry:
                used = 0
            if used:
                s.close_pos = pos
                s.close_deadline = time.monotonic() + CLOSE_LINGER_S
                self.closing.add(s)
                self._start_drain(s)
                return
        self._finish_close(s, pos)

    def _finish_close(self, s: Sock, pos: int) -> None:
        self._close_kernel(s)
        q = s.app.region.q
        q[s.cw + C_RES_VAL] = 0
        q[s.cw + C_RES_SEQ] = pos + 1
        dead = s.dead
        s.reset()
        s.dead = dead
        self._set_state(s, ST_CLOSED)
        self._post(s, EV_DONE)
        fd = s.app.watch.pop(s.idx, None)
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ data path

    def _op_send(self, s: Sock, tail_at_post: int) -> None:
        q = s.app.region.q
        tail = q[s.cw + C_TX_TAIL]
        check_ring(s.tx_head, tail, s.app.geometry.tx_size, "tx")
        if not s.tx_head - s.app.geometry.tx_size <= tail_at_post <= tail:
            raise BadEntry(errno.EFAULT, f"SEND names tx index {tail_at_post}, ring is at {s.tx_head}..{tail}")
        if s.state & ST_TX_SHUT:
            raise BadEntry(errno.EPIPE, "SEND after shutdown")
        if s.send_owed >= 0:  # the first SEND after an adoption: the owed one (late, not lost) or a newer one
            if tail_at_post <= s.send_owed:
                self.stats["tx_stranded_late_send"] += 1
            s.send_owed = -1
        self._start_drain(s)

    def _start_drain(self, s: Sock) -> None:
        s.draining = True
        s.idle = 0
        s.app.region.q[s.cw + C_DRAINING] = 1
        if s.state & ST_CONNECTED and not s.emask & select.EPOLLOUT:
            self.tx_active.add(s)

    def _drain(self, s: Sock) -> bool:
        """Send what the tx ring holds in one kernel call; False when there was nothing to do."""
        app = s.app
        q = app.region.q
        size = app.geometry.tx_size
        lock = self.lock
        if lock:
            lock.acquire()
        tail = q[s.cw + C_TX_TAIL]
        if lock:
            lock.release()
        try:
            used = check_ring(s.tx_head, tail, size, "tx")
        except BadEntry as e:
            self._fail(s, e.err, e.reason)
            return True
        if used == 0:
            s.streak = 0
            return self._tx_idle(s)
        s.streak += 1
        if s.streak < STREAK_MIN or q[s.cw + C_TX_WANT]:
            self.loop_latency = True  # not (yet) a stream, or its application waits for credits: no nap
        fill = used / size
        if fill > self.loop_fill:
            self.loop_fill = fill
        views = ring_views(app.region.buf, s.tx_off, size, s.tx_head, used)
        try:
            n = s.k.send(views[0]) if len(views) == 1 else s.k.sendmsg(views)
        except BlockingIOError:
            n = 0
        except OSError as e:
            for v in views:
                v.release()
            self._fail(s, e.errno or errno.EIO, f"send: {e}")
            return True
        for v in views:
            v.release()
        self.stats["sends"] += 1
        self.stats["send_bytes"] += n
        s.tx_head += n
        if lock:
            lock.acquire()
        q[s.cw + C_TX_HEAD] = s.tx_head
        if lock:
            lock.release()
        s.idle = 0
        if n:
            self.tx_progress.append(s)  # TX_WANT is read after the fence in _doorbells (Dekker)
        if n < used:  # kernel buffer full: wait for EPOLLOUT instead of spinning
            self.tx_active.discard(s)
            self._register(s, s.emask | select.EPOLLOUT)
        return True

    def _tx_idle(self, s: Sock) -> bool:
        if s.shut_pending >= 0:
            s.shut_pending = -1
            self._do_shutdown(s, s.shut_how, None)
        if s.close_pos >= 0:
            self._finish_close(s, s.close_pos)
            return True
        s.idle += 1
        if s.idle < TX_GRACE_LOOPS:
            return False
        # Release the draining flag, then look again (Dekker with the front-end's "store tail; load flag").
        # With membarrier the front-end loads the flag with a plain load, so our side must fence *its* CPU.
        q = s.app.region.q
        q[s.cw + C_DRAINING] = 0
        if self.membarrier:
            native.membarrier()
        else:
            native.fence()
        if q[s.cw + C_TX_TAIL] != s.tx_head and native.cas64(s.app.region.base + (s.cw + C_DRAINING) * 8, 0, 1):
            s.idle = 0
            return True
        s.draining = False
        self.tx_active.discard(s)
        return False

    def _rx(self, s: Sock) -> bool:
        """Fill the rx ring from the kernel: as much as fits, in one call (aggregation)."""
        app = s.app
        q = app.region.q
        size = app.geometry.rx_size
        try:
            used = check_ring(q[s.cw + C_RX_HEAD], s.rx_tail, size, "rx")
        except BadEntry as e:
            self._fail(s, e.err, e.reason)
            return True
        free = size - used
        if free == 0:
            if not s.rx_stalled:
                s.rx_stalled = True
                self.rx_stalled.add(s)
                self._register(s, s.emask & ~select.EPOLLIN & ~select.EPOLLRDHUP)
            return False
        views = ring_views(app.region.buf, s.rx_off, size, s.rx_tail, free)
        try:
            n = s.k.recv_into(views[0]) if len(views) == 1 else s.k.recvmsg_into(views)[0]
        except BlockingIOError:
            n = -1
        except OSError as e:
            for v in views:
                v.release()
            self._fail(s, e.errno or errno.EIO, f"recv: {e}")
            return True
        for v in views:
            v.release()
        if n < 0:
            return False
        self.stats["recvs"] += 1
        if n == 0:
            self._set_state(s, s.state | ST_EOF)
            self._register(s, s.emask & ~select.EPOLLIN & ~select.EPOLLRDHUP)
            self._post(s, EV_EOF)
            return True
        self.stats["recv_bytes"] += n
        was_empty = used == 0
        s.rx_tail += n
        q[s.cw + C_RX_TAIL] = s.rx_tail
        if was_empty:
            self._post(s, EV_RX)
        if s.rx_stalled and n:
            s.rx_stalled = False
            self.rx_stalled.discard(s)
        return True

    def _unstall(self, s: Sock) -> bool:
        q = s.app.region.q
        if s.k is None:
            self.rx_stalled.discard(s)
            return False
        if s.rx_tail - q[s.cw + C_RX_HEAD] < s.app.geometry.rx_size:
            s.rx_stalled = False
            self.rx_stalled.discard(s)
            self._register(s, s.emask | EPOLL_IN)
            return True
        return False

    def _kernel_event(self, s: Sock, ev: int) -> bool:
        if s.k is None:
            return False
        if s.state & ST_LISTENING:
            self._fill_backlog(s)
            return True
        if s.state & ST_CONNECTING:
            err = s.k.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0 and ev & select.EPOLLOUT:
                pos, s.connect_pos = s.connect_pos, -1
                self._connected(s, pos)
            elif err:
                pos, s.connect_pos = s.connect_pos, -1
                self._set_state(s, s.state & ~ST_CONNECTING)
                self._register(s, 0)
                self._complete(s, pos, -err)
            return True
        did = False
        if ev & select.EPOLLOUT:
            self._register(s, s.emask & ~select.EPOLLOUT)
            if s.draining:
                self.tx_active.add(s)
            did = True
        if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP):
            did |= self._rx(s)
        return did

    # ------------------------------------------------------------------ loop

    def _doorbells(self) -> None:
        """Fence, then read what the front-ends announced (TX_WANT, sleepers): the Dekker pairing of our
        head/tail/result stores with their "announce, then re-check" (a locked add on their side)."""
        progress = self.tx_progress
        if not progress and not self.watch_pending and not any(a.dirty for a in self.apps.values()):
            return
        native.fence()
        if progress:
            for s in progress:  # TX_WANT counts front-end threads waiting for credits; they clear it
                if s.k is not None and s.app.region.q[s.cw + C_TX_WANT]:
                    self._post(s, EV_TX)
            progress.clear()
        if self.watch_pending:
            self._watch_doorbells()
        for app in [a for a in self.apps.values() if a.dirty]:
            q = app.region.q
            for r in app.dirty:
                w = app.ring_words[r]
                sleepers = q[w + R_SLEEPERS]
                if sleepers:
                    try:  # a semaphore eventfd: one token per sleeping thread
                        os.eventfd_write(app.doorbells[r], min(sleepers, 1 << 16))
                    except OSError:
                        pass
                    q[w + R_RUNG] = (q[w + R_RUNG] + 1) & U64  # the application's memory: wraps
                    self.stats["rung"] += 1
                else:
                    q[w + R_SAVED] = (q[w + R_SAVED] + 1) & U64  # the application's memory: wraps
                    self.stats["saved"] += 1
            app.dirty.clear()

    def _watch_doorbells(self) -> None:
        """Write a watched socket's readiness eventfd only if its front-end armed it (C_WATCH_ARMED: it drained
        the eventfd after a call that would block), and disarm it: the same interrupt mitigation as the
        per-CPU doorbells.  Unarmed, the eventfd still holds our previous write, so the application is awake
        anyway (watch_saved counts those).  Called after the fence: the Dekker pair of the front-end's
        "arm (xchg), drain, re-check"."""
        for s in self.watch_pending:
            app = s.app
            fd = app.watch.get(s.idx)
            if fd is None or app.region.mm.closed:
                continue
            q = app.region.q
            if q[s.cw + C_WATCH_ARMED]:
                q[s.cw + C_WATCH_ARMED] = 0
                self.stats["watch_writes"] += 1
                try:
                    os.eventfd_write(fd, 1)
                except OSError:
                    pass
            else:
                self.stats["watch_saved"] += 1
        self.watch_pending.clear()

    def _app_message(self, app: App) -> None:
        """A readiness registration on the attach connection, or its end (the application is gone)."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(app.conn, MAX_MESSAGE, 2)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self._detach(app, "connection closed")
            return
        try:
            kind, idx = parse_watch(data, len(fds), app.geometry.max_sockets)
            if kind == "watch":
                if os.readlink(f"/proc/self/fd/{fds[0]}") != "anon_inode:[eventfd]":
                    raise AttachError("readiness fd is not an eventfd")
                os.set_blocking(fds[0], False)
                old = app.watch.pop(idx, None)
                if old is not None:
                    os.close(old)
                app.watch[idx] = fds.pop()
            else:
                old = app.watch.pop(idx, None)
                if old is not None:
                    os.close(old)
            reply = encode_reply(type="watching" if kind == "watch" else "unwatched", sock=idx)
        except (AttachError, OSError) as e:
            self.stats["bad_messages"] += 1
            log.warning("app %d: bad message on its attach connection: %s", app.id, e)
            reply = encode_reply(type="error", message=str(e))
        for fd in fds:
            os.close(fd)
        try:
            app.conn.send(reply)
        except OSError:
            pass

    def poll_once(self, timeout: float = 0) -> bool:
        did = False
        self.loop_latency = False
        self.loop_fill = 0.0
        for fd, ev in self.epoll.poll(timeout):
            self.loop_latency = True
            s = self.by_fd.get(fd)
            if s is not None:
                did |= self._kernel_event(s, ev)
            elif fd == self.kick:
                try:
                    os.eventfd_read(self.kick)
                except BlockingIOError:
                    pass
            elif fd == self.listener.fileno():
                self._accept_app()
                did = True
            elif fd in self.apps:
                self._app_message(self.apps[fd])
                did = True
        for app in list(self.apps.values()):
            if self._commands(app):
                did = self.loop_latency = True
        for s in list(self.tx_active):
            did |= self._drain(s)
        for s in list(self.rx_stalled):
            if self._unstall(s):
                did = self.loop_latency = True
        if self.closing:
            now = time.monotonic()
            for s in list(self.closing):
                if now > s.close_deadline:
                    log.info("app %d socket %d: close linger expired with data unsent", s.app.id, s.idx)
                    self._finish_close(s, s.close_pos)
        while self.bad_ring:
            s = self.bad_ring.pop()
            if not s.state & ST_ERROR and not s.app.region.mm.closed:
                self.stats["bad_entries"] += 1
                self._fail(s, errno.EINVAL, f"notification ring {s.app.region.q[s.cw + C_NOTIF_RING]} does not exist")
        self._doorbells()
        self.stats["loops"] += 1
        return did

    def _sleep(self, nap: float = 0.0) -> bool:
        """Announce sleep to every app, look once more, then block in epoll until a kick or an event (a nap:
        at most `nap` seconds, while tx rings are being drained)."""
        if not nap:
            self._release_idle_rings()
            now = time.monotonic()
            if now - self.stranded_checked >= STRANDED_CHECK_S:
                self.stranded_checked = now
                self._check_stranded(now)
        for app in self.apps.values():
            app.region.q[H_DISP_SLEEPING] = 1
        native.fence()
        pending = any(app.region.q[H_PENDING + w] for app in self.apps.values() for w in range(app.pending_words))
        if pending:
            timeout = 0.0
        elif nap:
            timeout = nap
            self.stats["naps"] += 1
        elif self.tx_active:
            timeout = 0.0
        elif self.rx_stalled or self.closing:
            timeout = 0.001  # rx credits and close linger are polled, not signalled
        else:
            timeout = self.sleep_ms / 1e3
        if not nap:
            self.stats["sleeps"] += 1
        did = self.poll_once(timeout)
        for app in self.apps.values():
            app.region.q[H_DISP_SLEEPING] = 0
        return did

    def _release_idle_rings(self) -> None:
        """Before a real sleep: end the draining grace of every tx ring that is empty now, so that the next
        send posts SEND (and kicks us) instead of waiting for a poll that will not come.  In a TCG guest a loop
        takes so long that the 64-loop grace outlived a whole RR round trip and kept us from ever sleeping."""
        for s in list(self.tx_active):
            if s.k is None or s.shut_pending >= 0 or s.close_pos >= 0:
                continue
            if s.app.region.q[s.cw + C_TX_TAIL] == s.tx_head:
                s.idle = TX_GRACE_LOOPS
                self._tx_idle(s)

    def _check_stranded(self, now: float) -> None:
        """Safety net against a lost wake-up on the tx path (it turns a hang into a counted stall of about
        STRANDED_S, tx_stranded in the stats, and a warning naming the socket).  A ring adopted with the flag set
        whose SEND arrives later was only slow (a front-end thread descheduled between its xchg and its post, e.g.
        waiting for the GIL): tx_stranded_late_send counts those, so tx_stranded minus it is the SENDs really
        lost.  A connected socket's tx ring
        holds data nobody will drain when either we drain it (draining) but it is neither in tx_active nor
        waiting for EPOLLOUT, or we do not drain it while its draining flag is set and no command is queued
        (the front-end that set the flag owes us a SEND).  The second state is normal for the microseconds
        between a front-end's xchg and its SEND, so it is adopted only when it held, with the same tail, for
        STRANDED_S."""
        for app in self.apps.values():
            if app.region.mm.closed:
                continue
            q = app.region.q
            for s in app.socks:
                if s.k is None or s.dead or not s.state & ST_CONNECTED or s.state & (ST_ERROR | ST_TX_SHUT):
                    s.stranded = None
                    continue
                tail = q[s.cw + C_TX_TAIL]
                if tail == s.tx_head:
                    s.stranded = None
                    continue
                if s.draining:
                    s.stranded = None
                    if s not in self.tx_active and not s.emask & select.EPOLLOUT:
                        self._stranded(s, "drained but not tracked")
                    continue
                if not q[s.cw + C_DRAINING] or s.cmdq.poll()[0] != EMPTY:
                    s.stranded = None  # the front-end posts (flag clear) or its SEND is queued
                    continue
                if s.stranded is None or s.stranded[1] != tail:
                    s.stranded = (now, tail)
                elif now - s.stranded[0] >= STRANDED_S:
                    s.stranded = None
                    s.send_owed = tail
                    self._stranded(s, "draining flag set, no SEND queued")

    def _stranded(self, s: Sock, why: str) -> None:
        self.stats["tx_stranded"] += 1
        log.warning("app %d socket %d: tx ring stranded (%s, %d bytes): draining it", s.app.id, s.idx, why,
                    s.app.region.q[s.cw + C_TX_TAIL] - s.tx_head)
        self._start_drain(s)

    def _adapt_poll(self, slept: float) -> None:
        """Halt-polling style: work that came back within --busy-poll-us of a sleep would have been caught by
        polling longer (grow the window); a longer sleep means polling would only have burnt the CPU (shrink)."""
        if slept < self.busy_poll_s:
            self.poll_s = min(max(self.poll_s * 2, NAP_MIN_S), self.busy_poll_s)
        else:
            self.poll_s /= 2
            if self.poll_s < NAP_MIN_S:
                self.poll_s = 0.0
        self.stats["poll_us"] = round(self.poll_s * 1e6)

    def _adapt_nap(self) -> None:
        """After a nap: lengthen it while the rings were far from full, shorten it when they were filling up."""
        fill = self.loop_fill
        if fill > NAP_HIGH or self.loop_latency:
            self.nap_s = max(self.nap_s / 2, NAP_MIN_S)
        elif fill < NAP_LOW:
            self.nap_s = min(self.nap_s * 2, self.nap_max_s)
        self.stats["nap_us"] = round(self.nap_s * 1e6)

    def run(self) -> None:
        """Busy-poll while work arrives; nap between drains of streaming rings (aggregation: one kernel send
        takes what accumulated meanwhile); sleep in epoll after an adaptive poll window without work (at most
        --busy-poll-us; see _adapt_poll)."""
        idle_since = time.monotonic()
        busy = self.busy_poll_s
        nap_max = self.nap_max_s
        while self.running:
            if self.poll_once():
                idle_since = time.monotonic()
                while nap_max and self.running and not self.loop_latency and self.loop_fill:
                    if not self._sleep(self.nap_s):
                        break
                    self._adapt_nap()
                    idle_since = time.monotonic()
            elif busy is not None and time.monotonic() - idle_since >= self.poll_s:
                t = time.monotonic()
                self._sleep()
                idle_since = time.monotonic()
                if self.adaptive_poll:
                    self._adapt_poll(idle_since - t)


# ---------------------------------------------------------------------- CLI


def online_cpus() -> set[int]:
    try:
        text = open("/sys/devices/system/cpu/online").read().strip()
        return placement.parse_cpu_list(text)
    except OSError:
        return set(range(os.cpu_count() or 1))


def isolated_cpus() -> set[int]:
    try:
        return placement.parse_cpu_list(open("/sys/devices/system/cpu/isolated").read().strip())
    except OSError:
        return set()


def choose_cpu(cpu: int | None, allow_shared: bool, online: set[int], isolated: set[int]) -> int:
    """The CPU to pin to; SystemExit with a clear message when it does not exist or is not dedicated."""
    if cpu is None:
        cpu = max(isolated) if isolated else max(online)
    if cpu not in online:
        raise SystemExit(f"isostackd: CPU {cpu} does not exist (online CPUs: {placement.format_cpu_list(online)})")
    if cpu not in isolated and not allow_shared:
        raise SystemExit(
            f"isostackd: CPU {cpu} is shared with other tasks (isolated CPUs: "
            f"{placement.format_cpu_list(isolated) or 'none'}); boot with isolcpus= or pass --allow-shared"
        )
    if len(online) == 1 and not allow_shared:
        raise SystemExit("isostackd: only one CPU: the dispatcher cannot have a dedicated one (--allow-shared)")
    return cpu


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isostackd", description="IsoStack dispatcher on a dedicated CPU")
    p.add_argument("--socket", default=None,
                   help=f"attach socket (default {DEFAULT_SOCKET}, or its instance_path for --instance K)")
    p.add_argument("--instance", type=int, default=0, help="instance number when several dispatchers run (0..15)")
    p.add_argument("--queues", default="",
                   help="NIC queue pairs this instance owns and places, e.g. 0,2 (default: all queues)")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: highest isolated, else highest)")
    p.add_argument("--allow-shared", action="store_true", help="run on a CPU that is not isolated")
    p.add_argument("--busy-poll-us", type=int, default=1000,
                   help="busy-poll this long after the last work before sleeping in epoll; -1 never sleeps")
    p.add_argument("--sleep-ms", type=int, default=100, help="longest epoll sleep when idle")
    p.add_argument("--fixed-poll", action="store_true",
                   help="always busy-poll the whole --busy-poll-us before sleeping (no adaptive window)")
    p.add_argument("--nap-max-us", type=int, default=1000,
                   help="longest coalescing nap between drains of streaming tx rings (adaptive; 0: never nap)")
    p.add_argument("--so-busy-poll-us", type=int, default=50,
                   help="SO_BUSY_POLL on every kernel socket (0: not set)")
    p.add_argument("--epoll-busy-poll-us", type=int, default=-1,
                   help="set the global net.core.busy_poll sysctl (epoll busy polling) while running; -1: leave it")
    p.add_argument("--uncontended-locks", action="store_true",
                   help="take a lock around every queue operation and socket-state access (lock ablation)")
    p.add_argument("--no-placement", action="store_true", help="do not move NIC IRQs/RPS/XPS to our CPU")
    p.add_argument("--interfaces", default="", help="comma-separated NICs to place (default: all virtio-net)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.instance < MAX_INSTANCES:
        raise SystemExit(f"isostackd: --instance {args.instance} not in 0..{MAX_INSTANCES - 1}")
    try:
        queues = placement.parse_cpu_list(args.queues) if args.queues else None
    except ValueError:
        raise SystemExit(f"isostackd: bad --queues {args.queues!r}") from None
    path = args.socket or instance_path(DEFAULT_SOCKET, args.instance)
    logging.basicConfig(level=args.log_level, format="%(asctime)s isostackd %(levelname)s %(message)s")
    cpu = choose_cpu(args.cpu, args.allow_shared, online_cpus(), isolated_cpus())
    os.sched_setaffinity(0, {cpu})
    log.info("pinned to CPU %d", cpu)
    if not args.no_placement:
        ifaces = [i for i in args.interfaces.split(",") if i] or None
        for line in placement.place(cpu, ifaces, queues=queues):
            log.info("placement: %s", line)
    d = Dispatcher(path, cpu, args.busy_poll_us, args.uncontended_locks, args.sleep_ms, args.instance, queues,
                   args.so_busy_poll_us, args.epoll_busy_poll_us, args.nap_max_us, not args.fixed_poll)

    def stop(signum, _frame):
        d.running = False

    def dump(signum, _frame):
        log.info("stats: %s", d.stats)

    signal.signal(signal.SIGUSR1, dump)  # the counters of a running isostackd, into its log
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("instance %d listening on %s (queues %s, busy poll %d us, SO_BUSY_POLL %d us, epoll busy poll %s, "
             "locks %s)", args.instance, path, args.queues or "all", args.busy_poll_us, args.so_busy_poll_us,
             d.stats["epoll_busy_poll_us"], "on" if args.uncontended_locks else "off")
    try:
        d.run()
    finally:
        log.info("stats: %s", d.stats)
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The IsoStack front-end: a socket-like API whose data path is shared memory, not system calls.

    from isostack import frontend as iso
    s = iso.create_connection(("10.0.0.2", 5001))   # attaches to isostackd on first use
    s.sendall(b"x" * 64)                             # copy into the tx ring; no syscall
    s.recv(4096)                                     # copy out of the rx ring; no syscall
    s.close()

`Stack(path)` is one attachment (one memfd with every socket's queues and rings, one doorbell eventfd);
`iso.socket()` / `iso.create_connection()` use a per-process default one (ISOSTACK_SOCKET overrides the path). A
send copies into the socket's tx ring, publishes the tail, and posts a SEND command only when the dispatcher is
not already draining that socket (xchg on the draining flag). With the C extension, `sock.send` and
`sock.sendall` are the methods of a per-socket C object (_fastpath.Tx, holding the tx tail): one C call per
message, the Python path for every edge case; stats() counts the SEND commands posted. A recv copies out of the
rx ring and publishes the head; the dispatcher sees the new credits itself. Blocking calls spin briefly, then
announce they sleep (the sleepers counter of their CPU's notification ring, after pointing the socket's events
at that ring) and wait on that CPU's doorbell eventfd, which the dispatcher rings only when the ring has a
sleeper (else it counts a saved doorbell). Control operations (socket/bind/connect/...) post a command and wait
for its completion in the socket's control page.

Non-blocking use (settimeout(0) / setblocking(False)): connect() raises BlockingIOError(EINPROGRESS) and the
result is read with getsockopt(SOL_SOCKET, SO_ERROR); recv/send/accept raise BlockingIOError.  fileno() is an
eventfd of this socket alone that the dispatcher writes when it posts an event for it (data, EOF, error,
incoming connection, connect or other completion, tx credits after a send that would block): register it for
reading with selectors or asyncio's loop.add_reader.  It stays readable until a call raises BlockingIOError;
that call arms the dispatcher's next write and clears it (setting it again if the socket became ready
meanwhile), so a wake-up is never lost, may be spurious, and costs the dispatcher one write per would-block
(interrupt mitigation: "watch_saved" in its stats counts the events that needed none).
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket as _socket
import struct
import threading
import time
import weakref
from array import array

from . import native, rss
from .attach import DEFAULT_SOCKET, MAX_MESSAGE, Hello, discover, instance_path, parse_reply
from .layout import (
    BODY,
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
    GETSOCKOPT_ALLOWED,
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
    ST_ACCEPTABLE,
    ST_CLOSED,
    ST_CONNECTED,
    ST_EOF,
    ST_ERROR,
    ST_LISTENING,
    VERSION,
    Geometry,
    Op,
    encode_addr,
    encode_listen_group,
    ring_spans,
    words_addr,
)
from .queues import CommandQueue, NotifyRing, Region, create_memfd

U64 = (1 << 64) - 1
_FAST = native.FAST
_FAST_RECV_INTO = getattr(_FAST, "recv_into", None)  # an extension built before it existed lacks it
_TX = getattr(_FAST, "Tx", None)  # the per-socket C send path (IsoSocket.__init__ installs it)


class _PyTx:
    """The tx tail and fast flag where the extension has no Tx (the class's send/sendall then serve)."""

    __slots__ = ("tail", "fast")

    def __init__(self, tail: int) -> None:
        self.tail = tail
        self.fast = True
MAX_SLEEP_MS = 5
SPIN = 20  # condition checks before the timed spin (kept for callers that read it)
# Adaptive spin before sleeping on the doorbell: a thread spins (sched_yield between checks: the GIL is
# released, no timer is armed) for twice the recent typical wait, within [SPIN_MIN_S, SPIN_MAX_S].  A wait
# that outlasts SPIN_MAX_S is not "imminent" and halves the budget.  time.sleep(0) is no yield here: it arms a
# timer and costs the 50 us timer slack per call (measured: 60 us), which was the whole RR latency gap on the
# host.  The cap is low on purpose: in a TCG guest a spinning vCPU burns a host core that the peer guest and
# the dispatcher need (a 2 ms cap cut 64-byte STREAM to a third there), and an RR round trip there is
# longer than the cap anyway, so the budget shrinks to the minimum and the doorbell does the waking.
# Credit waits (a full tx ring) do not spin at all: the ring drains at the kernel's pace.
SPIN_MIN_S = 20e-6
SPIN_MAX_S = float(os.environ.get("ISOSTACK_SPIN_MAX_US", "200")) / 1e6
CONTROL_TIMEOUT = 10.0  # how long a non-blocking socket waits for the dispatcher to complete a control command

PORT_TRIES = 4096  # source ports hashed at most when looking for one that lands on the socket's instance

_sentinel = object()


def _numeric(family: int, address: tuple) -> tuple[str, int]:
    """(numeric ip, port) of a connect address (resolved like encode_addr does)."""
    port, packed = encode_addr(family, address)
    n = 4 if family == _socket.AF_INET else 16
    return _socket.inet_ntop(family, packed[:n]), port


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _err(code: int, what: str = "") -> OSError:
    msg = os.strerror(code) + (f" ({what})" if what else "")
    return OSError(code, msg)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


class Instance:
    """One attachment to one isostackd instance: its shared memory, command queues, kick and slot allocator.

    A Stack has one per running instance; every socket lives in exactly one of them (its owner)."""

    def __init__(self, path: str, geometry: Geometry, doorbells: list[int], name: str, connect_timeout: float):
        self.path = path
        self.geometry = g = geometry
        memfd = create_memfd(g.total_size)
        self.region = None
        self.conn = None
        try:
            self.region = Region(memfd, g.total_size)
            q = self.q = self.region.q
            q[H_MAGIC], q[H_VERSION] = MAGIC, VERSION
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
            self.kick = fds[0]
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
        self.sleepers = [self.base + (w + R_SLEEPERS) * 8 for w in self.ring_words]  # per ring, fetch_add
        self._alloc_lock = threading.Lock()
        self._ctl_lock = threading.Lock()  # one readiness registration at a time on the attach connection
        self._free = list(range(g.max_sockets - 1, -1, -1))
        self._closing: dict[int, int] = {}  # slot -> position of its CLOSE
        self.send_posts = 0  # SEND commands this process posted through the Python path
        self.c_send_posts = array("Q", [0])  # ... and through the C send path (each Tx posts into it)
        self.sockets: weakref.WeakSet[IsoSocket] = weakref.WeakSet()  # switched off before the memory goes
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # The C send/recv paths hold raw addresses of the region: a socket that outlives its Stack must fail
        # with EBADF from the Python checks, not write into unmapped memory.
        for sock in list(self.sockets):
            sock._closed = True
            sock._sync_fast()
        self.conn.close()
        os.close(self.kick)
        self.queues.clear()
        self.rings = []
        self.region.close()

    def _alloc(self, stack: Stack, timeout: float = 2.0) -> int:
        """A free slot; a slot whose CLOSE is still in flight becomes free once the dispatcher finished it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._alloc_lock:
                if self._free:
                    return self._free.pop()
                for idx in [i for i in self._closing if self._closed_done(i)]:
                    del self._closing[idx]
                    return idx
                if not self._closing:
                    break
            if not stack.wait(lambda: any(self._closed_done(i) for i in list(self._closing)), deadline, (self,)):
                break
        raise _err(errno.EMFILE, f"all {self.geometry.max_sockets} IsoStack sockets of instance {self.id} in use")

    def _closed_done(self, idx: int) -> bool:
        pos = self._closing.get(idx)
        cw = self.geometry.control_off(idx) // 8
        return pos is not None and self.q[cw + C_RES_SEQ] > pos and bool(self.q[cw + C_STATE] & ST_CLOSED)

    def _release(self, idx: int, close_pos: int | None = None) -> None:
        with self._alloc_lock:
            if close_pos is None:
                self._free.append(idx)
            else:
                self._closing[idx] = close_pos

    def _watch(self, idx: int, efd: int) -> None:
        """Have the dispatcher write `efd` on every event of slot idx (it answers before it posts any more)."""
        with self._ctl_lock:
            _socket.send_fds(self.conn, [json.dumps({"type": "watch", "sock": idx}).encode()], [efd])
            try:
                reply = json.loads(self.conn.recv(MAX_MESSAGE) or b"null")
            except (TimeoutError, ValueError) as e:
                raise OSError(errno.EPROTO, f"isostackd did not confirm the readiness fd: {e}") from None
        if not isinstance(reply, dict) or reply.get("type") != "watching" or reply.get("sock") != idx:
            raise OSError(errno.EPROTO, f"isostackd refused the readiness fd: {reply!r}")

    def _pending(self, idx: int) -> None:
        """Flag slot idx in the pending bitmap; kick the dispatcher if it announced it sleeps."""
        native.fetch_or64(self.base + (H_PENDING + (idx >> 6)) * 8, 1 << (idx & 63))
        # The locked OR above orders our stores before this load (Dekker with the dispatcher's sleep).
        if self.q[H_DISP_SLEEPING]:
            self.q[H_KICKS] += 1
            try:
                os.eventfd_write(self.kick, 1)
            except OSError:
                pass

    def ring_stats(self) -> list[dict]:
        """Per notification ring: entries posted, doorbells rung and saved (no sleeper), entries dropped."""
        q = self.q
        return [{"ring": r, "posted": q[w + R_TAIL], "doorbells_rung": q[w + R_RUNG], "doorbells_saved": q[w + R_SAVED],
                 "notifications_dropped": q[w + R_DROPPED]} for r, w in enumerate(self.ring_words)]

    def stats(self) -> dict:
        rings = self.ring_stats()
        out = {"instance": self.id, "cpu": self.cpu, "queues": None if self.rx_queues is None else
               sorted(self.rx_queues), "kicks": self.q[H_KICKS],
               "send_posts": self.send_posts + self.c_send_posts[0],
               "app": self.info.get("app"), "rings": rings}
        for k in ("doorbells_rung", "doorbells_saved", "notifications_dropped"):
            out[k] = sum(r[k] for r in rings)
        return out


class Stack:
    """One application's attachment to every running isostackd instance.

    Notifications: one ring per CPU of this machine in every instance's memory (Geometry.notif_rings), and
    one doorbell eventfd per CPU shared by all instances.  A thread about to wait on a socket names the ring
    of the CPU it runs on in the socket's control page (C_NOTIF_RING), announces itself in that ring's
    sleepers and sleeps on that CPU's doorbell; so a socket's events go to the CPU of the thread that last
    waited on it, and the dispatcher rings a doorbell only when that ring has a sleeper.

    `Stack(path)` attaches to the instance at `path` and to every further instance discovered beside it
    (attach.discover); `instances=[0]` restricts that.  New sockets go to the instances round-robin; a
    listener is replicated on every instance (see IsoSocket.listen); with several instances and classifier
    settings (rss.Classifier, read from /etc/isostack/classifier.json by default), connect() binds a source
    port whose rx queue belongs to the socket's instance.
    """

    def __init__(self, path: str | None = None, geometry: Geometry | None = None, name: str = "",
                 connect_timeout: float = 5.0, instances: list[int] | None = None, classifier=_sentinel):
        self.path = path or os.environ.get("ISOSTACK_SOCKET", DEFAULT_SOCKET)
        self.geometry = g = (geometry or Geometry()).resolved().check()
        discovered = instances is None
        if discovered:
            paths = [p for _k, p in discover(self.path)] or [self.path]  # the error then names the usual path
        else:
            paths = [instance_path(self.path, k) for k in instances]
        self.nrings = g.notif_rings
        self._spin_s = SPIN_MAX_S / 4  # adapted by _learn
        self._wait_avg = self._spin_s / 2
        self.doorbells = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC | os.EFD_SEMAPHORE)
                          for _ in range(self.nrings)]
        self.instances: list[Instance] = []
        try:
            for p in paths:
                try:
                    self.instances.append(Instance(p, g, self.doorbells, name or f"pid{os.getpid()}",
                                                   connect_timeout))
                except (ConnectionRefusedError, FileNotFoundError):
                    # the socket of an isostackd that was killed: skip it when the path was only discovered
                    if not discovered or (p == paths[-1] and not self.instances):
                        raise
        except BaseException:
            for inst in self.instances:
                inst.close()
            for fd in self.doorbells:
                os.close(fd)
            raise
        self.instances.sort(key=lambda i: i.id)
        first = self.instances[0]
        self.info = first.info
        if classifier is _sentinel:
            classifier = _load_classifier() if len(self.instances) > 1 else None
        self.classifier = classifier
        self._next = 0  # round-robin cursor (a race between threads only skews the balance)
        self._ring_locks = [threading.Lock() for _ in range(self.nrings)]  # drains of one ring (try-lock only)
        self._local_ips: dict[tuple[int, str], str] = {}
        self.closed = False

    # single-instance views, for callers written before instances existed
    @property
    def q(self):
        return self.instances[0].q

    @property
    def region(self):
        return self.instances[0].region

    @property
    def queues(self):
        return self.instances[0].queues

    @property
    def doorbell(self) -> int:
        return self.doorbells[0]

    @property
    def kick(self) -> int:
        return self.instances[0].kick

    @property
    def base(self) -> int:
        return self.instances[0].base

    def _pending(self, idx: int) -> None:
        self.instances[0]._pending(idx)

    # ---------------------------------------------------------------- public
    def pick_instance(self) -> Instance:
        """The instance a new socket goes to: round-robin."""
        insts = self.instances
        i = self._next % len(insts)
        self._next = i + 1
        return insts[i]

    def socket(self, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0,
               instance: int | None = None) -> IsoSocket:
        if instance is None:
            inst = self.pick_instance()
        else:
            inst = next((i for i in self.instances if i.id == instance), None)
            if inst is None:
                raise ValueError(f"no isostackd instance {instance} attached (have {[i.id for i in self.instances]})")
        idx = inst._alloc(self)
        s = IsoSocket(self, idx, family, type, inst=inst)
        try:
            s._call(Op.SOCKET, family, type)
        except BaseException:
            inst._release(idx)
            raise
        return s

    def create_connection(self, address: tuple, timeout=_sentinel, source_address=None) -> IsoSocket:
        host, port = address[0], address[1]
        err = None
        for family, _t, _p, _c, sa in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
            if family not in (_socket.AF_INET, _socket.AF_INET6):
                continue
            s = self.socket(family)
            try:
                if timeout is not _sentinel:
                    s.settimeout(timeout)
                if source_address:
                    s.bind(source_address)
                s.connect(sa)
                return s
            except OSError as e:
                err = e
                s.close()
        raise err or OSError(errno.EHOSTUNREACH, f"no address for {host}")

    def stats(self) -> dict:
        """Totals over every instance and ring, and "instances": per instance, with "rings": per ring."""
        per = [i.stats() for i in self.instances]
        out = {k: sum(p[k] for p in per) for k in ("doorbells_rung", "doorbells_saved", "kicks",
                                                   "send_posts", "notifications_dropped")}
        out["app"] = per[0]["app"]
        out["instances"] = per
        return out

    def ring(self) -> int:
        """The notification ring of the CPU the calling thread runs on."""
        return native.getcpu() % self.nrings

    def poll(self) -> list[tuple[int, int]]:
        """Consume every doorbell and return the notification hints [(socket slot, events)] of every ring."""
        for fd in self.doorbells:
            try:
                while True:
                    os.eventfd_read(fd)
            except BlockingIOError:
                pass
        out = []
        for r, lock in enumerate(self._ring_locks):
            with lock:
                out += [(sock, ev) for inst in self.instances for sock, ev, _seq in inst.rings[r].drain()]
        return out

    def close(self) -> None:
        """Detach: every isostackd instance closes this Stack's sockets and releases the memory."""
        if self.closed:
            return
        self.closed = True
        for inst in self.instances:
            inst.close()
        for fd in self.doorbells:
            os.close(fd)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _local_ip(self, family: int, remote_ip: str) -> str:
        """The source address the kernel routes to remote_ip from (a connected UDP socket: no packet sent)."""
        key = (family, remote_ip)
        ip = self._local_ips.get(key)
        if ip is None:
            with _socket.socket(family, _socket.SOCK_DGRAM) as u:
                u.connect((remote_ip, 9))
                ip = u.getsockname()[0]
            self._local_ips[key] = ip
        return ip

    def wait(self, cond, deadline: float | None, insts=None, ring: int | None = None, spin: bool = True) -> bool:
        """Wait until cond() is true or the deadline (monotonic) passes; spin, then sleep on a doorbell.

        `insts`: the instances whose dispatchers may make cond() true (told in `ring`'s sleepers that we
        sleep); `ring`: the notification ring the sockets we wait for post to (default: our CPU's)."""
        insts = self.instances if insts is None else insts
        if cond():
            return True
        now = time.monotonic
        t0 = now()
        if not spin:
            return self._sleep_wait(cond, deadline, insts, ring)
        end = t0 + self._spin_s
        if deadline is not None and deadline < end:
            end = deadline
        yield_ = os.sched_yield
        while True:
            yield_()
            if cond():
                self._learn(now() - t0)
                return True
            if now() >= end:
                break
        if not self._sleep_wait(cond, deadline, insts, ring):
            return False
        self._learn(now() - t0)
        return True

    def _learn(self, waited: float) -> None:
        """Adapt the spin budget to how long waits take (a racy heuristic shared by this Stack's threads)."""
        if waited < SPIN_MAX_S:
            self._wait_avg += (waited - self._wait_avg) / 8
            self._spin_s = min(max(2 * self._wait_avg, SPIN_MIN_S), SPIN_MAX_S)
        else:
            self._spin_s = max(self._spin_s / 2, SPIN_MIN_S)

    def _sleep_wait(self, cond, deadline: float | None, insts, ring: int | None) -> bool:
        r = self.ring() if ring is None else ring
        doorbell = self.doorbells[r]
        p = select.poll()
        p.register(doorbell, select.POLLIN)
        while True:
            if cond():
                return True
            # Several threads share the doorbell and one may eat another's token, so sleeps are bounded
            # (MAX_SLEEP_MS): a lost token costs at most that much latency, never a hang.
            if deadline is None:
                ms = MAX_SLEEP_MS
            else:
                ms = min((deadline - time.monotonic()) * 1000, MAX_SLEEP_MS)
                if ms <= 0:
                    return False
            for inst in insts:
                native.fetch_add64(inst.sleepers[r], 1)  # announce, then look again (locked add = fence)
            try:
                if cond():
                    return True
                if p.poll(ms):
                    try:
                        os.eventfd_read(doorbell)
                    except BlockingIOError:
                        pass
            finally:
                for inst in insts:
                    native.fetch_add64(inst.sleepers[r], U64)
            lock = self._ring_locks[r]
            if lock.acquire(blocking=False):  # the entries are hints (state is in the control pages): drop them
                try:
                    for inst in insts:
                        inst.rings[r].drain()
                finally:
                    lock.release()


def _load_classifier():
    """The guest's classifier settings (rss.DEFAULT_PATH), or None where the testbed wrote none."""
    path = os.environ.get("ISOSTACK_CLASSIFIER", rss.DEFAULT_PATH)
    try:
        return rss.Classifier.from_file(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class IsoSocket:
    """A TCP socket served by isostackd; mirrors the parts of socket.socket that applications use."""

    def __init__(self, stack: Stack, idx: int, family: int, type: int, timeout=_sentinel, inst: Instance | None = None):
        g = stack.geometry
        inst = inst or stack.instances[0]
        self._stack = stack
        self._inst = inst
        self._idx = idx
        self.family = family
        self.type = type
        self.proto = 0
        self._q = inst.q
        self._buf = inst.region.buf
        self._cw = g.control_off(idx) // 8
        self._cmdq = inst.queues[idx]
        self._tx_off, self._tx_size = g.tx_off(idx), g.tx_size
        self._rx_off, self._rx_size = g.rx_off(idx), g.rx_size
        self._draining_addr = inst.base + (self._cw + C_DRAINING) * 8
        self._asym = inst.asym_fence
        self._ctl = inst.base + self._cw * 8
        self._txr = inst.base + self._tx_off
        self._rxr = inst.base + self._rx_off
        self._timeout = _socket.getdefaulttimeout() if timeout is _sentinel else timeout
        self._lock = threading.Lock()  # serializes this socket's control calls (application-local)
        self._rx_head = self._q[self._cw + C_RX_HEAD]
        self._tx_shut = False
        self._closed = False
        self._fileno = -1
        self._members: list[IsoSocket] = []  # a listener on several instances: one socket each, self among them
        self._connect_pos = -1  # a non-blocking CONNECT in flight (its result not read yet)
        self._tx_armed = False  # a non-blocking send found no credits: TX_WANT held until credits are seen
        self._bound = False
        self.rx_queue: int | None = None  # predicted rx queue of an active open that picked its source port
        # The tx tail lives in _txp.  With the extension's Tx, sock.send / sock.sendall resolve straight to its C
        # methods (one call per message: copy, publish, SEND only when the draining flag was clear); every other
        # case (flags, not connected, no credits, closed, shut down, credits awaited) goes to the Python paths.
        tail = self._q[self._cw + C_TX_TAIL]
        if _TX is not None:
            # The C path also posts the SEND itself (no Python between winning the flag and the SEND queued).
            cpost = (BODY.pack(Op.SEND, 0, idx, 0, 0, 0, b""), self._cmdq.tail_addr, self._cmdq.slots_addr,
                     self._cmdq.nslots, inst.base + (H_PENDING + (idx >> 6)) * 8, 1 << (idx & 63),
                     inst.base + H_DISP_SLEEPING * 8, inst.base + H_KICKS * 8, inst.kick, inst.c_send_posts)
            self._txp = _TX(self._ctl, self._txr, self._tx_size, tail, self._asym, self._send_slow,
                            self._sendall_slow, self._post_send, cpost)
            self.send = self._txp.send
            self.sendall = self._txp.sendall
        else:
            self._txp = _PyTx(tail)
        self._inst.sockets.add(self)

    @property
    def _tx_tail(self) -> int:
        return self._txp.tail

    @_tx_tail.setter
    def _tx_tail(self, value: int) -> None:
        self._txp.tail = value

    def _sync_fast(self) -> None:
        """The C send path may serve calls only while nothing needs the Python path's bookkeeping."""
        self._txp.fast = not (self._closed or self._tx_shut or self._tx_armed)

    def _post_send(self, tail: int) -> None:
        """Post SEND: we won the draining flag, so nobody drains the ring until this SEND is read.  If it
        cannot be posted, hand the flag back (the dispatcher is not draining: it would have held the flag), so
        the next send posts instead of leaving the ring stranded."""
        try:
            self._post(Op.SEND, tail)
        except BaseException:
            if not self._closed:
                native.xchg64(self._draining_addr, 0)
            raise
        self._inst.send_posts += 1

    # ---------------------------------------------------------------- plumbing
    def _state(self) -> int:
        return self._q[self._cw + C_STATE]

    def _check(self) -> int:
        if self._closed:
            raise _err(errno.EBADF)
        st = self._q[self._cw + C_STATE]
        if st & ST_ERROR:
            raise _err(self._q[self._cw + C_ERR] or errno.EIO)
        return st

    def _here(self) -> int:
        """Direct this socket's events to the notification ring of the calling thread's CPU; returns it."""
        r = self._stack.ring()
        q, cw = self._q, self._cw
        if q[cw + C_NOTIF_RING] != r:
            q[cw + C_NOTIF_RING] = r
        return r

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _post(self, op: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"") -> int:
        pos = self._cmdq.push(op, self._idx, a, b, c, ip)
        if pos == -1:  # queue full: the dispatcher is behind; wait for a slot
            deadline = time.monotonic() + 5.0
            while pos == -1 and time.monotonic() < deadline:
                time.sleep(0.0001)
                pos = self._cmdq.push(op, self._idx, a, b, c, ip)
        if pos < 0:
            raise _err(errno.EAGAIN if pos == -1 else errno.EPROTO, "command queue full or corrupt")
        self._inst._pending(self._idx)
        return pos

    def _call(self, op: int, a: int = 0, b: int = 0, c: int = 0, ip: bytes = b"", deadline=_sentinel) -> int:
        """Post a command and wait for its result; a non-blocking socket waits up to CONTROL_TIMEOUT."""
        with self._lock:
            if self._closed:
                raise _err(errno.EBADF)
            if self._connect_pos >= 0:  # the result words are about to be reused: take the CONNECT's first
                self._connect_error(block=True)
            ring = self._here()
            pos = self._post(op, a, b, c, ip)
            if deadline is _sentinel:
                deadline = time.monotonic() + CONTROL_TIMEOUT if self._timeout == 0.0 else self._deadline()
            if not self._stack.wait(lambda: self._done(pos), deadline, (self._inst,), ring):
                raise TimeoutError("timed out")
            return self._result(pos)

    def _done(self, pos: int) -> bool:
        q, cw = self._q, self._cw
        return q[cw + C_RES_SEQ] > pos or bool(q[cw + C_STATE] & ST_ERROR)

    def _result(self, pos: int) -> int:
        q, cw = self._q, self._cw
        if q[cw + C_RES_SEQ] <= pos:
            raise _err(q[cw + C_ERR] or errno.EIO)
        val = _signed(q[cw + C_RES_VAL])
        if val < 0:
            raise _err(-val)
        return val

    def _connect_error(self, block: bool = False) -> int | None:
        """errno of the non-blocking CONNECT in flight (0: connected) once it completed, then forgets it;
        None while it is still in progress (block: wait for it, up to CONTROL_TIMEOUT)."""
        pos = self._connect_pos
        if not self._done(pos):
            if not block or not self._stack.wait(lambda: self._done(pos), time.monotonic() + CONTROL_TIMEOUT,
                                                 (self._inst,), self._here()):
                return None
        self._connect_pos = -1
        try:
            self._result(pos)
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    # ---------------------------------------------------------------- readiness (fileno)
    def _ready_now(self) -> bool:
        """Would a recv/accept/send or the pending connect make progress now (or fail)?"""
        for m in self._members or (self,):
            q, cw = m._q, m._cw
            if q[cw + C_STATE] & (ST_ERROR | ST_EOF | ST_ACCEPTABLE) or q[cw + C_RX_TAIL] != m._rx_head:
                return True
            if m._connect_pos >= 0 and m._done(m._connect_pos):
                return True
            if m._tx_armed and m._tx_tail - q[cw + C_TX_HEAD] < m._tx_size:
                return True
        return False

    def _rearm(self) -> None:
        """Before reporting "would block": arm the dispatcher's write (C_WATCH_ARMED, a locked xchg: the fence
        of our side), clear our eventfd, then set it again if we are ready after all (the dispatcher changes
        the state, fences, then reads the armed flag, so no event falls in between)."""
        if self._fileno < 0:
            return
        for m in self._members or (self,):
            native.xchg64(m._ctl + C_WATCH_ARMED * 8, 1)
        try:
            os.eventfd_read(self._fileno)
        except BlockingIOError:
            pass
        if self._ready_now():
            os.eventfd_write(self._fileno, 1)

    def _arm_tx(self) -> None:
        if not self._tx_armed:
            self._tx_armed = True
            self._sync_fast()
            native.fetch_add64(self._ctl + C_TX_WANT * 8, 1)  # the dispatcher posts EV_TX when credits come

    def _disarm_tx(self) -> None:
        if self._tx_armed:
            self._tx_armed = False
            self._sync_fast()
            native.fetch_add64(self._ctl + C_TX_WANT * 8, U64)

    def _addr(self) -> tuple:
        q, cw = self._q, self._cw
        return words_addr(q[cw + C_ADDR_FAMILY], q[cw + C_ADDR_PORT], q[cw + C_ADDR_IP0], q[cw + C_ADDR_IP1])

    # ---------------------------------------------------------------- socket API
    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # ---------------------------------------------------------------- instances
    @property
    def instance(self) -> int:
        """The isostackd instance that owns this socket, as its dispatcher wrote it into the control page."""
        return self._q[self._cw + C_OWNER]

    @property
    def rx_cpu(self) -> int:
        """The CPU the kernel last processed this connection's incoming packets on (at accept/connect), or -1."""
        return _signed(self._q[self._cw + C_RX_CPU])

    def _multi(self) -> bool:
        return len(self._stack.instances) > 1

    def bind(self, address: tuple) -> None:
        port, ip = encode_addr(self.family, address)
        if self._multi() and not self._bound:  # it may become a listener replicated on every instance
            self._call(Op.SETSOCKOPT, _socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        self._call(Op.BIND, self.family, port, 0, ip)
        self._bound = True

    def listen(self, backlog: int = 128) -> None:
        backlog = max(0, min(int(backlog), 65535))
        if not self._multi():
            self._call(Op.LISTEN, backlog)
            return
        self._listen_everywhere(backlog)

    def _listen_everywhere(self, backlog: int) -> None:
        """One listener per instance on the same address, one reuseport group whose i-th member is instance i
        (members join in the order they listen); its BPF program gives each SYN to the owner of its rx queue
        (dispatcher.reuseport_program)."""
        stack = self._stack
        if not self._bound:
            self.bind(("0.0.0.0" if self.family == _socket.AF_INET else "::", 0))
        addr = self.getsockname()
        members = [self]
        try:
            for inst in stack.instances:
                if inst is self._inst:
                    continue
                m = stack.socket(self.family, self.type, instance=inst.id)
                members.append(m)
                m.bind(addr)
            members.sort(key=lambda m: m._inst.id)
            cpus = [m._inst.cpu if isinstance(m._inst.cpu, int) and 0 <= m._inst.cpu < 255 else 254 for m in members]
            owners = {q: i for i, m in enumerate(members) for q in (m._inst.rx_queues or ()) if 0 <= q < 16}
            b, c, ip = encode_listen_group(cpus, owners)
            for m in members:
                m._call(Op.LISTEN, backlog, b, c, ip)
                if self._fileno >= 0 and m is not self:
                    m._inst._watch(m._idx, self._fileno)
                    native.xchg64(m._ctl + C_WATCH_ARMED * 8, 1)
        except BaseException:
            for m in members:
                if m is not self:
                    m.close()
            raise
        self._members = members

    def _pick_source_port(self, address: tuple) -> None:
        """Bind a source port whose Toeplitz hash puts the connection's rx queue on this socket's instance.

        Only with several instances, classifier settings, an instance that owns particular queues and an
        unbound socket; when no port in the first PORT_TRIES candidates maps there (a flow rule pins the peer
        to another queue, say) the kernel picks the port as usual."""
        stack, inst = self._stack, self._inst
        if self._bound or not self._multi() or stack.classifier is None or not inst.rx_queues:
            return
        remote_ip, remote_port = _numeric(self.family, address)
        local_ip = stack._local_ip(self.family, remote_ip)
        lo, hi = _ephemeral_range()
        busy = 0
        for port, queue in rss.ports_for_queues(stack.classifier, local_ip, remote_ip, remote_port,
                                                inst.rx_queues, lo, hi, limit=PORT_TRIES):
            try:
                if not busy:  # a port of one of our own TIME_WAIT connections is fine to reuse
                    self._call(Op.SETSOCKOPT, _socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                lport, lip = encode_addr(self.family, (local_ip, port))
                self._call(Op.BIND, self.family, lport, 0, lip)
            except OSError as e:
                if e.errno != errno.EADDRINUSE or busy >= 16:
                    return
                busy += 1
                continue
            self._bound = True
            self.rx_queue = queue
            return

    def connect(self, address: tuple) -> None:
        """Blocking: returns once connected.  Non-blocking: BlockingIOError(EINPROGRESS), then fileno() becomes
        readable when it completed and getsockopt(SOL_SOCKET, SO_ERROR) says how; EALREADY meanwhile."""
        if self._timeout == 0.0 and self._connect_pos >= 0:
            with self._lock:
                err = self._connect_error()
            if err is None:
                raise _err(errno.EALREADY)
            if err:
                raise _err(err)
            return
        self._pick_source_port(address)
        port, ip = encode_addr(self.family, address)
        if self._timeout != 0.0:
            self._call(Op.CONNECT, self.family, port, 0, ip)
            return
        with self._lock:
            if self._closed:
                raise _err(errno.EBADF)
            self._here()
            self._connect_pos = self._post(Op.CONNECT, self.family, port, 0, ip)
        self._rearm()
        raise BlockingIOError(errno.EINPROGRESS, "connection in progress")

    def getsockopt(self, level: int, optname: int, buflen: int = 0):
        """Integer options: SO_ERROR (the non-blocking connect's result, else the socket's error) and SO_TYPE
        here, the others (layout.GETSOCKOPT_ALLOWED) read from the kernel socket by the dispatcher."""
        if (level, optname) == (_socket.SOL_SOCKET, _socket.SO_ERROR):
            with self._lock:
                if self._connect_pos >= 0:
                    v = self._connect_error() or 0
                else:
                    v = self._q[self._cw + C_ERR] if self._state() & ST_ERROR else 0
        elif (level, optname) == (_socket.SOL_SOCKET, _socket.SO_TYPE):
            v = self.type
        elif (level, optname) not in GETSOCKOPT_ALLOWED:  # the dispatcher would fail the socket for asking
            raise _err(errno.ENOPROTOOPT)
        else:
            self._call(Op.GETSOCKOPT, level, optname)
            v = _signed(self._q[self._cw + C_OPTVAL])
        if buflen:
            return (v & 0xFFFFFFFF).to_bytes(4, "little")[:buflen]  # every option here is a C int
        return v

    def connect_ex(self, address: tuple) -> int:
        try:
            self.connect(address)
        except TimeoutError:
            return errno.ETIMEDOUT
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    def accept(self) -> tuple[IsoSocket, tuple]:
        """The next connection from whichever instance has one; it is owned by that instance."""
        deadline = self._deadline()
        stack = self._stack
        members = self._members or [self]
        while True:
            for m in members:
                st = m._check()
                if not st & ST_LISTENING:
                    raise _err(errno.EINVAL, "socket is not listening")
                if st & ST_ACCEPTABLE:
                    got = m._accept_one(deadline, self._timeout == 0.0)
                    if got is not None:
                        return got
            if self._timeout == 0.0:
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "no connection waiting")
            ring = [m._here() for m in members][0]
            if not stack.wait(lambda: any(m._acceptable() for m in members), deadline, [m._inst for m in members],
                              ring):
                raise TimeoutError("timed out")

    def _accept_one(self, deadline, nonblocking: bool | None = None) -> tuple[IsoSocket, tuple] | None:
        inst = self._inst
        if nonblocking is None:
            nonblocking = self._timeout == 0.0
        # The connection is there: only the dispatcher's answer is awaited.  `nonblocking` is the listener's
        # mode (a member of a multi-instance listener keeps its own, blocking, timeout: its deadline of "now"
        # made the ACCEPT time out before the dispatcher could answer).
        if nonblocking:
            deadline = time.monotonic() + CONTROL_TIMEOUT
        new = inst._alloc(self._stack)
        try:
            self._call(Op.ACCEPT, new, deadline=deadline)
        except BlockingIOError:
            inst._release(new)
            return None
        except BaseException:
            inst._release(new)
            raise
        s = IsoSocket(self._stack, new, self.family, self.type, timeout=_socket.getdefaulttimeout(), inst=inst)
        return s, s._addr()

    def _acceptable(self) -> bool:
        return bool(self._q[self._cw + C_STATE] & (ST_ACCEPTABLE | ST_ERROR))

    def send(self, data, flags: int = 0) -> int:
        """Copy as much of data as the tx ring has credits for; post SEND only if nobody drains the ring."""
        if _FAST is not None and not flags and not self._closed and not self._tx_shut:
            r = _FAST.send(self._ctl, self._txr, self._tx_size, self._tx_tail, self._asym, data)
            if r > 1:  # 2 * bytes copied + must-post
                if self._tx_armed:
                    self._disarm_tx()
                self._tx_tail += r >> 1
                if r & 1:
                    self._post_send(self._tx_tail)
                return r >> 1
        return self._send_slow(data, flags)

    def _send_slow(self, data, flags: int = 0) -> int:
        """Checks, credit waits, and the pure-Python copy (no extension)."""
        if flags:
            raise _err(errno.EOPNOTSUPP, "send flags")
        q, cw = self._q, self._cw
        if self._closed:
            raise _err(errno.EBADF)
        st = q[cw + C_STATE]
        if st & ST_ERROR or not st & ST_CONNECTED or self._tx_shut:
            self._check()
            raise _err(errno.EPIPE if self._tx_shut else errno.ENOTCONN)
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        n = len(data)
        if n == 0:
            return 0
        tail = self._tx_tail
        free = self._tx_size - (tail - q[cw + C_TX_HEAD])
        if free <= 0:
            if self._timeout == 0.0:
                self._arm_tx()
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "tx ring full")
            size = self._tx_size

            def space() -> bool:
                return size - (tail - q[cw + C_TX_HEAD]) > 0 or bool(q[cw + C_STATE] & ST_ERROR)

            # Announce the wait (a counter: the dispatcher only reads it, so no announcement can be lost).
            want = self._ctl + C_TX_WANT * 8
            native.fetch_add64(want, 1)
            try:
                ok = self._stack.wait(space, self._deadline(), (self._inst,), self._here(), spin=False)
            finally:
                native.fetch_add64(want, U64)
            if not ok:
                raise TimeoutError("timed out")
            self._check()
            free = self._tx_size - (tail - q[cw + C_TX_HEAD])
        if self._tx_armed:
            self._disarm_tx()
        k = n if n <= free else free
        size = self._tx_size
        o = tail & (size - 1)
        start = self._tx_off + o
        if o + k <= size:  # the common case: one piece
            self._buf[start : start + k] = data if k == n else memoryview(data)[:k]
        else:
            first = size - o
            mv = memoryview(data)
            self._buf[start : start + first] = mv[:first]
            self._buf[self._tx_off : self._tx_off + k - first] = mv[first:k]
        tail += k
        self._tx_tail = tail
        q[cw + C_TX_TAIL] = tail
        # Post SEND only if the dispatcher is not draining this ring.  With membarrier (see queues.py) a plain
        # load of the flag is enough; the xchg decides who posts when the flag looked clear.
        if (not self._asym or not q[cw + C_DRAINING]) and not native.xchg64(self._draining_addr, 1):
            self._post_send(tail)
        return k

    def sendall(self, data, flags: int = 0) -> None:
        sent = 0
        if _FAST is not None and not flags and not self._closed and not self._tx_shut:
            r = _FAST.send(self._ctl, self._txr, self._tx_size, self._tx_tail, self._asym, data)
            if r > 1:
                sent = r >> 1
                self._tx_tail += sent
                if r & 1:
                    self._post_send(self._tx_tail)
                if type(data) is bytes and sent == len(data):
                    return
        self._sendall_slow(data, flags, sent)

    def _sendall_slow(self, data, flags: int = 0, sent: int = 0) -> None:
        """sendall from byte `sent` on: a send per stretch of credits, waiting for them (the socket's timeout
        bounds the whole call)."""
        mv = memoryview(data).cast("B")
        total = len(mv)
        deadline = self._deadline()
        old = self._timeout
        try:
            while sent < total:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out")
                    self._timeout = left
                sent += self.send(mv[sent:], flags)
        finally:
            self._timeout = old

    def _wait_rx(self) -> None:
        q, cw, head = self._q, self._cw, self._rx_head
        ring = self._here()
        if not self._stack.wait(lambda: q[cw + C_RX_TAIL] != head or q[cw + C_STATE] & (ST_EOF | ST_ERROR),
                                self._deadline(), (self._inst,), ring):
            raise TimeoutError("timed out")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if flags:
            raise _err(errno.EOPNOTSUPP, "recv flags")
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if _FAST is not None and not flags and not self._closed and bufsize > 0:
            data = _FAST.recv(self._ctl, self._rxr, self._rx_size, self._rx_head, bufsize)
            if data:
                self._rx_head += len(data)
                return data
        q, cw = self._q, self._cw
        while True:
            if self._closed:
                raise _err(errno.EBADF)
            head = self._rx_head
            avail = q[cw + C_RX_TAIL] - head
            if avail > 0:
                k = avail if avail <= bufsize else bufsize
                buf, off = self._buf, self._rx_off
                spans = ring_spans(head, k, self._rx_size)
                if len(spans) == 1:
                    o, ln = spans[0]
                    data = bytes(buf[off + o : off + o + ln])
                else:
                    data = b"".join(bytes(buf[off + o : off + o + ln]) for o, ln in spans)
                self._rx_head = head + k
                q[cw + C_RX_HEAD] = head + k
                return data
            st = q[cw + C_STATE]
            if st & ST_ERROR:
                self._check()
            if st & ST_EOF:
                if q[cw + C_RX_TAIL] == head:  # EOF is published after the last data
                    return b""
                continue
            if not st & ST_CONNECTED:
                raise _err(errno.ENOTCONN)
            if bufsize == 0:
                return b""
            if self._timeout == 0.0:
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "no data")
            self._wait_rx()

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Copy straight from the rx ring into buffer (the C fast path, else memoryview slices): no bytes
        object per call."""
        if flags:
            raise _err(errno.EOPNOTSUPP, "recv flags")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        fast = _FAST_RECV_INTO
        if fast is not None and not self._closed:
            try:
                k = fast(self._ctl, self._rxr, self._rx_size, self._rx_head, buffer, nbytes)
            except BufferError:  # not a contiguous buffer: the memoryview path below says what is wrong
                fast = None
            else:
                if k < 0:
                    raise ValueError("buffer too small for requested bytes")
                if k:
                    self._rx_head += k
                    return k
        mv = memoryview(buffer).cast("B")
        n = len(mv)
        if nbytes:
            if nbytes > n:
                raise ValueError("buffer too small for requested bytes")
            n = nbytes
        q, cw = self._q, self._cw
        while True:
            if self._closed:
                raise _err(errno.EBADF)
            head = self._rx_head
            avail = q[cw + C_RX_TAIL] - head
            if avail > 0 and n > 0:
                k = avail if avail <= n else n
                buf, off = self._buf, self._rx_off
                at = 0
                for o, ln in ring_spans(head, k, self._rx_size):
                    mv[at : at + ln] = buf[off + o : off + o + ln]
                    at += ln
                self._rx_head = head + k
                q[cw + C_RX_HEAD] = head + k
                return k
            st = q[cw + C_STATE]
            if st & ST_ERROR:
                self._check()
            if st & ST_EOF:
                if q[cw + C_RX_TAIL] == head:  # EOF is published after the last data
                    return 0
                continue
            if not st & ST_CONNECTED:
                raise _err(errno.ENOTCONN)
            if n == 0:
                return 0
            if self._timeout == 0.0:
                self._rearm()
                raise BlockingIOError(errno.EAGAIN, "no data")
            self._wait_rx()
            if fast is not None and not self._closed:
                k = fast(self._ctl, self._rxr, self._rx_size, self._rx_head, mv, n)
                if k:
                    self._rx_head += k
                    return k

    def shutdown(self, how: int) -> None:
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self._tx_shut = True
            self._sync_fast()
        self._call(Op.SHUTDOWN, how)

    def setsockopt(self, level: int, optname: int, value) -> None:
        if isinstance(value, (bytes, bytearray)):
            value = struct.unpack("<i", bytes(value)[:4].ljust(4, b"\0"))[0]
        self._call(Op.SETSOCKOPT, level, optname, int(value))

    def getsockname(self) -> tuple:
        self._call(Op.GETSOCKNAME)
        return self._addr()

    def getpeername(self) -> tuple:
        self._call(Op.GETPEERNAME)
        return self._addr()

    def fileno(self) -> int:
        """This socket's readiness eventfd (see the module docstring): readable once it has an event."""
        if self._closed:
            return -1
        if self._fileno < 0:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                for m in self._members or (self,):
                    m._inst._watch(m._idx, efd)
            except BaseException:
                os.close(efd)
                raise
            self._fileno = efd
            self._rearm()
        return self._fileno

    def close(self) -> None:
        """Post CLOSE (queued tx bytes still go out) without waiting; the slot is reused once it is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sync_fast()
            if self._fileno >= 0:
                os.close(self._fileno)
                self._fileno = -1
            if self._stack.closed:
                return
            for m in self._members:
                if m is not self:
                    m.close()
            try:
                pos = self._post(Op.CLOSE)
            except OSError:
                return  # queue dead: the slot is lost until the Stack detaches
            self._inst._release(self._idx, pos)

    def __enter__(self) -> IsoSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "detached" if self._stack.closed else f"{self._state():#x}"
        return f"<IsoSocket instance={self._inst.id} slot={self._idx} state={state} closed={self._closed}>"


# ---------------------------------------------------------------- per-process default Stack

_default: Stack | None = None
_default_lock = threading.Lock()


def default_stack() -> Stack:
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Stack()
        return _default


def _forget_default() -> None:  # a forked child must attach on its own
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_default)


def socket(family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0) -> IsoSocket:
    return default_stack().socket(family, type, proto)


def create_connection(address: tuple, timeout=_sentinel, source_address=None) -> IsoSocket:
    return default_stack().create_connection(address, timeout, source_address)

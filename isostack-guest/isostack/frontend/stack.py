"""Stack: one application's attachment to every running isostackd instance, and its wait policy.

`Stack(path)` attaches to the instance at `path` and to every further instance discovered beside it
(attach.discover); `instances=[0]` restricts that.  New sockets go to the instances round-robin (steering.py
says how listeners and active opens find their owner).

The wait policy: a thread waiting on a socket spins first, yielding the CPU between checks, for an adaptive
budget; then it naps on its CPU's doorbell (readiness.Doorbells) in bounded sleeps until the condition holds
or the deadline passes.

An instance whose isostackd died (liveness.py) fails every socket it owns with ECONNRESET, waiting or not;
new sockets go to the instances still alive (ENOTCONN when none is)."""

from __future__ import annotations

import errno
import os
import select
import socket as _socket
import time
import weakref
from collections.abc import Callable, Iterable

from .. import native
from ..attach import DEFAULT_SOCKET, discover, instance_path
from ..layout import Geometry, Op
from ..queues import U64
from .errors import os_error
from .instance import Instance
from .isosocket import IsoSocket
from .liveness import Liveness
from .readiness import Doorbells, Notification
from .slot import UNSET
from .steering import load_classifier, local_ip_towards

MAX_SLEEP_MS = 5
# How long a detach waits for the CLOSEs in flight (their queued tx bytes): the dispatcher's own bound on a
# graceful close (isostack.dispatcher.commands.CLOSE_LINGER_S) plus a margin.
CLOSE_LINGER_S = 6.0
# Adaptive spin before sleeping on the doorbell: a thread spins (sched_yield between checks: the GIL is
# released, no timer is armed) for twice the recent typical wait, within [SPIN_MIN_S, SPIN_MAX_S].  A wait
# that outlasts SPIN_MAX_S is not "imminent" and halves the budget.  time.sleep(0) is no yield here: it arms a
# timer and costs the timer slack per call.  The cap is low on purpose: in a TCG guest a spinning vCPU burns
# a host core that the peer guest and the dispatcher need, and an RR round trip there is longer than the cap
# anyway, so the budget shrinks to the minimum and the doorbell does the waking.
# Credit waits (a full tx ring) do not spin at all: the ring drains at the kernel's pace.
SPIN_MIN_S = 20e-6
SPIN_MAX_S = float(os.environ.get("ISOSTACK_SPIN_MAX_US", "200")) / 1e6


class Stack:
    """One application's attachment to every running isostackd instance (see the module docstring)."""

    def __init__(self, path: str | None = None, geometry: Geometry | None = None, name: str = "",
                 connect_timeout: float = 5.0, instances: list[int] | None = None, classifier=UNSET):
        self.path = path or os.environ.get("ISOSTACK_SOCKET", DEFAULT_SOCKET)
        self.geometry = g = (geometry or Geometry()).resolved().check()
        discovered = instances is None
        if discovered:
            paths = [p for _k, p in discover(self.path)] or [self.path]  # the error then names the usual path
        else:
            paths = [instance_path(self.path, k) for k in instances]
        self._spin_s = SPIN_MAX_S / 4  # adapted by _learn
        self._wait_avg = self._spin_s / 2
        self.doorbells = Doorbells(g.notif_rings)
        self.instances: list[Instance] = []
        try:
            for p in paths:
                try:
                    self.instances.append(Instance(p, g, self.doorbells.fds, name or f"pid{os.getpid()}",
                                                   connect_timeout))
                except (ConnectionRefusedError, FileNotFoundError):
                    # the socket of an isostackd that was killed: skip it when the path was only discovered
                    if not discovered or (p == paths[-1] and not self.instances):
                        raise
        except BaseException:
            for inst in self.instances:
                inst.close()
            self.doorbells.close()
            raise
        self.instances.sort(key=lambda i: i.id)
        self.info = self.instances[0].info  # the attach reply of the lowest-numbered instance (pid, busy_poll)
        if classifier is UNSET:
            classifier = load_classifier() if len(self.instances) > 1 else None
        self.classifier = classifier
        self._round_robin = 0  # cursor of pick_instance (a race between threads only skews the balance)
        self._local_ips: dict[tuple[int, str], str] = {}
        self.closed = False
        try:
            self.liveness = Liveness(self.instances, self._instance_gone)
            self._stop_liveness = weakref.finalize(self, self.liveness.stop)
        except BaseException:
            for inst in self.instances:
                inst.close()
            self.doorbells.close()
            raise

    # ---------------------------------------------------------------- sockets
    @property
    def alive(self) -> bool:
        """Is at least one of our isostackd instances still there?"""
        return any(not i.gone for i in self.instances)

    def pick_instance(self) -> Instance:
        """The instance a new socket goes to: round-robin over those still alive."""
        insts = [i for i in self.instances if not i.gone]
        if not insts:
            raise os_error(errno.ENOTCONN, f"every isostackd this process attached to at {self.path} is gone "
                                           "(attach again: a new Stack)")
        i = self._round_robin % len(insts)
        self._round_robin = i + 1
        return insts[i]

    def socket(self, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0,
               instance: int | None = None) -> IsoSocket:
        if instance is None:
            inst = self.pick_instance()
        else:
            inst = next((i for i in self.instances if i.id == instance), None)
            if inst is None:
                raise ValueError(f"no isostackd instance {instance} attached (have {[i.id for i in self.instances]})")
            if inst.gone:
                raise inst.gone_error()
        slot = inst.alloc_slot(self.wait)
        s = IsoSocket(self, slot, family, type, inst)
        try:
            s._call(Op.SOCKET, family, type)
        except BaseException:
            inst.release_slot(slot)
            raise
        return s

    def create_connection(self, address: tuple, timeout=UNSET, source_address=None) -> IsoSocket:
        host, port = address[0], address[1]
        err = None
        for family, _t, _p, _c, sa in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
            if family not in (_socket.AF_INET, _socket.AF_INET6):
                continue
            s = self.socket(family)
            try:
                if timeout is not UNSET:
                    s.settimeout(timeout)
                if source_address:
                    s.bind(source_address)
                s.connect(sa)
                return s
            except OSError as e:
                err = e
                s.close()
        raise err or OSError(errno.EHOSTUNREACH, f"no address for {host}")

    def local_ip(self, family: int, remote_ip: str) -> str:
        """The source address towards remote_ip (cached: the source-port choice of every connect asks)."""
        key = (family, remote_ip)
        ip = self._local_ips.get(key)
        if ip is None:
            ip = self._local_ips[key] = local_ip_towards(family, remote_ip)
        return ip

    # ---------------------------------------------------------------- notifications and stats
    def stats(self) -> dict:
        """Totals over every instance and ring, and "instances": per instance, with "rings": per ring."""
        per = [i.stats() for i in self.instances]
        out = {k: sum(p[k] for p in per) for k in ("doorbells_rung", "doorbells_saved", "kicks",
                                                   "send_posts", "notifications_dropped")}
        out["app"] = per[0]["app"]
        out["instances"] = per
        return out

    def current_ring(self) -> int:
        """The notification ring of the CPU the calling thread runs on."""
        return self.doorbells.current_ring()

    def poll(self) -> list[Notification]:
        """Consume every doorbell and return the notification hints (socket slot, events) of every ring."""
        return self.doorbells.poll(self.instances)

    def close(self, linger_s: float = CLOSE_LINGER_S) -> None:
        """Detach: every isostackd instance closes this Stack's sockets and releases the memory.

        First, for at most `linger_s`, wait for the CLOSEs still in flight: the dispatcher is still sending their
        queued tx bytes from our memory, which a detach would discard — a process that closes its sockets and
        exits must not lose the end of its data (the kernel flushes an orphaned socket's send queue too)."""
        if self.closed:
            return
        closing = [inst for inst in self.instances if inst.closes_in_flight()]
        if closing and linger_s > 0:
            try:
                self.wait(lambda: not any(inst.closes_in_flight() for inst in closing), time.monotonic() + linger_s,
                          closing)
            except OSError:
                pass  # an instance that died has nothing left to flush
        self.closed = True
        self._stop_liveness()
        for inst in self.instances:
            inst.close()
        self.doorbells.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _instance_gone(self, inst: Instance) -> None:
        """The liveness thread saw `inst`'s dispatcher die: fail its sockets, wake whoever waits on them."""
        sockets = inst.lose()
        for fd in self.doorbells.fds:  # sleepers look again (their wait raises ECONNRESET)
            os.eventfd_write(fd, 1)
        for sock in sockets:  # event loops asleep on a readiness fd
            sock._wake_readiness()

    # ---------------------------------------------------------------- the wait policy
    def wait(self, cond: Callable[[], bool], deadline: float | None, instances: Iterable[Instance] | None = None,
             ring: int | None = None, spin: bool = True) -> bool:
        """Wait until cond() is true or the deadline (monotonic) passes; spin, then sleep on a doorbell.

        `instances`: those whose dispatchers may make cond() true (told in `ring`'s sleepers that we sleep);
        `ring`: the notification ring the sockets we wait for post to (default: our CPU's)."""
        instances = self.instances if instances is None else instances
        if cond():
            return True
        _fail_if_gone(instances)
        now = time.monotonic
        t0 = now()
        if not spin:
            return self._sleep_wait(cond, deadline, instances, ring)
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
        if not self._sleep_wait(cond, deadline, instances, ring):
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

    def _sleep_wait(self, cond: Callable[[], bool], deadline: float | None, instances: Iterable[Instance],
                    ring: int | None) -> bool:
        r = self.current_ring() if ring is None else ring
        doorbell = self.doorbells.fds[r]
        p = select.poll()
        p.register(doorbell, select.POLLIN)
        while True:
            if cond():
                return True
            _fail_if_gone(instances)
            # Several threads share the doorbell and one may eat another's token, so sleeps are bounded
            # (MAX_SLEEP_MS): a lost token costs at most that much latency, never a hang.
            if deadline is None:
                ms = MAX_SLEEP_MS
            else:
                ms = min((deadline - time.monotonic()) * 1000, MAX_SLEEP_MS)
                if ms <= 0:
                    return False
            for inst in instances:
                native.fetch_add64(inst.sleeper_addrs[r], 1)  # announce, then look again (locked add = fence)
            try:
                if cond():
                    return True
                if p.poll(ms):
                    try:
                        os.eventfd_read(doorbell)
                    except BlockingIOError:
                        pass
            finally:
                for inst in instances:
                    native.fetch_add64(inst.sleeper_addrs[r], U64)
            self.doorbells.drop_hints(r, instances)


def _fail_if_gone(instances: Iterable[Instance]) -> None:
    """A wait for an instance whose dispatcher died would never end: ECONNRESET instead."""
    for inst in instances:
        if inst.gone:
            raise inst.gone_error()

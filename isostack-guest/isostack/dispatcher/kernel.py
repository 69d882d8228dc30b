"""Kernel glue: the attach socket, the kernel sockets in the epoll set, busy-poll settings, reuseport steering.

Kernel busy polling puts the NIC's receive processing into the dispatcher's loop, on its CPU, instead of in
the softirq after an interrupt.  SO_BUSY_POLL (--so-busy-poll-us, default 50) on every kernel socket makes a
recv that finds the socket empty first poll the device queue the flow arrives on (one NAPI poll: our sockets
are non-blocking).  The net.core.busy_poll sysctl (--epoll-busy-poll-us) makes epoll_wait poll the NAPI
context of our sockets before it reports "nothing".  Per-epoll parameters (EPIOCSPARAMS) exist only from
Linux 6.9 and the guests run 6.1, so the sysctl is the only epoll knob there; it is global, hence off by
default (-1) and an explicit choice of the experiment, and only instance 0 writes and restores it (another
instance restoring it at its exit would switch it off under the others); the other instances report the
value they see.  SO_BUSY_POLL above net.core.busy_read needs CAP_NET_ADMIN (isostackd runs as root in the
guests); failures are counted, not fatal.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import socket
import stat
import struct
import threading

from ..layout import C_DRAINING, C_ERR, C_OWNER, C_RX_CPU, C_RX_HEAD, C_RX_TAIL, C_TX_HEAD, C_TX_TAIL, C_TX_WANT
from .state import U64, SharedState, SocketSlot

log = logging.getLogger("isostackd")

EPOLL_IN = select.EPOLLIN | select.EPOLLRDHUP
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)
SO_BUSY_POLL = getattr(socket, "SO_BUSY_POLL", 46)
BUSY_POLL_SYSCTL = "sys/net/core/busy_poll"
SO_ATTACH_REUSEPORT_CBPF = 51
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SKF_AD_OFF, SKF_AD_QUEUE, SKF_AD_CPU = -0x1000, 16, 36
SOCK_FILTER = "<HBBI"


def reuseport_program(cpus: list[int], owners: dict[int, int]) -> list[tuple[int, int, int, int]]:
    """Classic BPF for a reuseport group: the index of the member owning the SYN's rx queue, else of the
    member on whose CPU the SYN is processed, else 0xffffffff (out of range: the kernel hashes).

    The front-end listens on every instance, in instance order, each with SO_REUSEPORT on the same address,
    so the kernel has one reuseport group whose i-th member is instance i.  skb->queue_mapping is the rx
    queue virtio-net recorded ("the queue the SYN arrived on"); SKF_AD_CPU is the CPU its queue's IRQ/RPS
    targets; the guests' virtio-net records no rx queue, so there the CPU rule decides.  SO_INCOMING_CPU
    alone would be simpler but mainline 6.1's reuseport group ignores it (fixed in 6.2 by b261eda84ec1,
    "soreuseport: Fix socket selection for SO_INCOMING_CPU"), and an eBPF SOCKARRAY would need bpf(2) from
    every instance."""
    program = [(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_QUEUE) & 0xFFFFFFFF)]
    for queue, member in sorted(owners.items()):
        program += [(BPF_JEQ_K, 0, 1, queue + 1), (BPF_RET_K, 0, 0, member)]  # queue_mapping is rx queue + 1
    program.append((BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_CPU) & 0xFFFFFFFF))
    for member, cpu in enumerate(cpus):
        program += [(BPF_JEQ_K, 0, 1, cpu), (BPF_RET_K, 0, 0, member)]
    program.append((BPF_RET_K, 0, 0, 0xFFFFFFFF))
    return program


def attach_reuseport_program(kernel_socket: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """setsockopt(SO_ATTACH_REUSEPORT_CBPF): struct sock_fprog {u16 len; struct sock_filter *filter}."""
    instructions = ctypes.create_string_buffer(b"".join(struct.pack(SOCK_FILTER, *insn) for insn in program))
    fprog = struct.pack("<H6xQ", len(program), ctypes.addressof(instructions))
    kernel_socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def incoming_cpu(kernel_socket: socket.socket) -> int:
    """The CPU the kernel last received the connection's packets on (-1: unknown)."""
    try:
        return kernel_socket.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU)
    except OSError:
        return -1


class EventfdBlocked(Exception):
    """An application's eventfd would have blocked the loop: its owner cleared O_NONBLOCK and filled it."""


class EventfdWriter:
    """Writes the applications' eventfds (doorbells, readiness fds) without ever blocking the loop, from any
    thread.

    The application shares the eventfd's open file description with us: it can clear O_NONBLOCK whenever it
    likes, and a blocking write on a counter at 0xFFFFFFFFFFFFFFFE waits until someone reads it, i.e. forever.
    Neither a private non-blocking description (opening /proc/self/fd/N of an eventfd fails with ENXIO; a dup
    shares the flags) nor pwritev2(RWF_NOWAIT) (EOPNOTSUPP on eventfds) is available, and poll(POLLOUT) then
    write leaves a window in which the owner can fill the counter (and POLLOUT promises room for 1, a doorbell
    may add more).  So: poll(POLLOUT, 0) first (a full counter is skipped: False, "eventfd_full"), then the
    write, watched by a guard thread: a write still in progress after GUARD_S whose counter has no room for it
    (the kernel's own count, /proc/self/fdinfo) is blocked for good, and the guard unblocks it by reading the
    counter down, which wakes the writer (EventfdBlocked: the caller closes that application).  A write that
    is only slow (the loop thread preempted on a loaded machine) has room, so it is left alone: a timer signal
    could not tell the two apart, and worked only in the main thread.  The guard sleeps while no write is made.
    """

    GUARD_S = 0.05
    IDLE_CHECKS = 20  # guard checks without a write before it sleeps until the next one
    FULL = 0xFFFFFFFFFFFFFFFE  # the largest count an eventfd holds

    def __init__(self, stats: dict):
        self.stats = stats
        self._seq = 0  # writes started
        self._writing: tuple[int, int, int] | None = None  # (seq, fd, value) of the write in progress
        self._blocked = 0  # seq of the write the guard found blocked and unblocked
        self._active = threading.Event()  # writes happen: the guard checks every GUARD_S
        self._closed = threading.Event()
        self._guard = threading.Thread(target=self._watch, name="isostackd-eventfd-guard", daemon=True)
        self._guard.start()

    def close(self) -> None:
        self._closed.set()
        self._active.set()
        self._guard.join(5)

    def write(self, fd: int, value: int) -> bool:
        """Add `value` to the eventfd: True if written, False if it is full (or gone).  EventfdBlocked if the
        write blocked (the application made its eventfd blocking and filled it: close it)."""
        try:
            ready = select.poll()
            ready.register(fd, select.POLLOUT)
            if not ready.poll(0):
                self.stats["eventfd_full"] += 1
                return False
        except OSError:
            return False
        self._seq += 1
        seq = self._seq
        self._writing = (seq, fd, value)
        if not self._active.is_set():  # after _writing: the guard re-checks both after it clears the event
            self._active.set()
        try:
            os.eventfd_write(fd, value)
        except BlockingIOError:
            self.stats["eventfd_full"] += 1
            return False
        except OSError:
            return False
        finally:
            self._writing = None
        if self._blocked == seq:
            raise EventfdBlocked
        return True

    def _watch(self) -> None:
        seen: tuple[int, int, int] | None = None
        last_seq, idle = 0, 0
        while True:
            self._active.wait()
            if self._closed.wait(self.GUARD_S):
                return
            current = self._writing
            if current is not None and current == seen and self._stuck(current[1], current[2]):
                self._unblock(current)
            seen = current
            if current is None and self._seq == last_seq:
                idle += 1
                if idle >= self.IDLE_CHECKS:
                    idle = 0
                    self._active.clear()
                    if self._writing is not None or self._seq != last_seq:
                        self._active.set()
            else:
                idle = 0
            last_seq = self._seq

    def _stuck(self, fd: int, value: int) -> bool:
        """Whether the eventfd's counter leaves no room for `value` (the kernel's count, in fdinfo)."""
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("eventfd-count:"):
                        return int(line.split()[1], 16) > self.FULL - value
        except (OSError, ValueError):
            pass
        return False

    def _unblock(self, writing: tuple[int, int, int]) -> None:
        """Read the counter down until the blocked write goes through (a semaphore eventfd gives 1 a read).  The
        fd stays open meanwhile: the loop thread, which alone closes it, is inside the write."""
        self._blocked = writing[0]
        log.warning("an eventfd write blocked (its owner made it blocking and filled it): unblocking it")
        fd = writing[1]
        readable = select.poll()
        try:
            os.set_blocking(fd, False)  # our reads must not block either (the owner may still race us)
            readable.register(fd, select.POLLIN)
            for _ in range(writing[2] + 64):
                if self._writing != writing or not readable.poll(0):
                    return
                os.eventfd_read(fd)
        except OSError:
            return


_libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's setfsuid


def socket_as(uid: int, family: int, kind: int) -> socket.socket:
    """A kernel socket owned by `uid` as the kernel sees it (sk_uid: the socket inode's owner, taken from the
    creating thread's fsuid), so the kernel's same-uid rule of SO_REUSEPORT groups protects the applications
    from each other as it would without isostackd.  setfsuid is per thread and changes nothing else we use;
    a dispatcher that may not switch (not root) creates the socket as itself."""
    if uid == os.geteuid():
        return socket.socket(family, kind)
    previous = _libc.setfsuid(uid)
    try:
        return socket.socket(family, kind)
    finally:
        _libc.setfsuid(previous)


def unprivileged_port_start(proc_root: str = "/proc") -> int:
    """The lowest port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start, 1024 if unknown)."""
    try:
        with open(os.path.join(proc_root, "sys/net/ipv4/ip_unprivileged_port_start")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


def listen_attach_socket(path: str) -> socket.socket:
    """The attach socket applications connect to; a stale one is replaced, a live one is an error."""
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
    # Bound and listening under a temporary name, then renamed into place: the path appears only once it
    # accepts, so an application (or a launcher that waits for the file) never meets ECONNREFUSED in between.
    tmp = f"{path}.{os.getpid()}.tmp"
    if len(os.fsencode(tmp)) >= 108:  # sun_path: no room for the temporary name
        tmp = path
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        listener.bind(tmp)
        os.chmod(tmp, 0o666)
        listener.listen(64)
        if tmp != path:
            os.rename(tmp, path)
    except BaseException:
        listener.close()
        if tmp != path:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return listener


class BusyPoll:
    """SO_BUSY_POLL on every kernel socket, and net.core.busy_poll while the dispatcher runs (see above)."""

    def __init__(self, stats: dict, instance: int, so_busy_poll_us: int, epoll_busy_poll_us: int,
                 proc_root: str):
        self.stats = stats
        self.so_busy_poll_us = so_busy_poll_us
        self.sysctl_path = os.path.join(proc_root, BUSY_POLL_SYSCTL)
        self.sysctl_saved: str | None = None
        if epoll_busy_poll_us >= 0:
            if instance == 0:
                self._set_epoll_busy_poll(epoll_busy_poll_us)
            else:
                self.stats["epoll_busy_poll_us"] = self._read_sysctl()
                log.info("net.core.busy_poll is %s (instance 0 sets it)", self.stats["epoll_busy_poll_us"])

    def _set_epoll_busy_poll(self, us: int) -> None:
        """net.core.busy_poll = us (remembering the old value for restore()); the stats say what it is."""
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

    def apply_to(self, kernel_socket: socket.socket) -> None:
        if self.so_busy_poll_us <= 0:
            return
        try:
            kernel_socket.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, self.so_busy_poll_us)
            self.stats["so_busy_poll_set"] += 1
        except OSError:
            self.stats["so_busy_poll_failed"] += 1

    def restore(self) -> None:
        """Put net.core.busy_poll back as it was (only if we changed it)."""
        if self.sysctl_saved is not None:
            try:
                with open(self.sysctl_path, "w") as f:
                    f.write(self.sysctl_saved + "\n")
            except OSError as e:
                log.warning("cannot restore net.core.busy_poll: %s", e)
            self.sysctl_saved = None


class KernelSockets:
    """The kernel sockets behind the socket slots: adopting one into a slot, its epoll interest, closing it."""

    def __init__(self, shared: SharedState, busy_poll: BusyPoll):
        self.shared = shared
        self.busy_poll = busy_poll

    def register(self, slot: SocketSlot, mask: int) -> None:
        """Set the slot's epoll interest to `mask` (0: out of the epoll set)."""
        if slot.kernel_socket is None or mask == slot.epoll_mask:
            return
        epoll = self.shared.epoll
        if slot.epoll_mask == 0:
            epoll.register(slot.fd, mask)
        elif mask == 0:
            epoll.unregister(slot.fd)
        else:
            epoll.modify(slot.fd, mask)
        slot.epoll_mask = mask

    def close(self, slot: SocketSlot) -> None:
        """Close the slot's kernel socket and its queued connections; the slot leaves every work set."""
        shared = self.shared
        if slot.kernel_socket is not None:
            slot.app.kernel_sockets -= 1
            if slot.epoll_mask:
                try:
                    shared.epoll.unregister(slot.fd)
                except (OSError, ValueError):
                    pass
            shared.by_fd.pop(slot.fd, None)
            slot.kernel_socket.close()
            slot.kernel_socket = None
            slot.epoll_mask = 0
        if slot.backlog:
            for kernel_socket, _address in slot.backlog:
                kernel_socket.close()
            slot.app.kernel_sockets -= len(slot.backlog)
            slot.backlog.clear()
        shared.tx_active.discard(slot)
        shared.tx_blocked.discard(slot)
        shared.rx_stalled.discard(slot)
        shared.closing.discard(slot)

    def adopt(self, slot: SocketSlot, kernel_socket: socket.socket, state: int) -> None:
        """Bind a kernel socket to a free slot; ring indices restart where the front-end's are."""
        words = slot.app.region.q
        control = slot.control_word
        kernel_socket.setblocking(False)
        self.busy_poll.apply_to(kernel_socket)
        slot.kernel_socket, slot.fd = kernel_socket, kernel_socket.fileno()
        slot.app.kernel_sockets += 1
        self.shared.by_fd[slot.fd] = slot
        slot.tx_head = words[control + C_TX_TAIL]
        slot.rx_tail = words[control + C_RX_HEAD]
        words[control + C_TX_HEAD] = slot.tx_head
        words[control + C_RX_TAIL] = slot.rx_tail
        words[control + C_DRAINING] = 0
        words[control + C_TX_WANT] = 0
        words[control + C_ERR] = 0
        words[control + C_OWNER] = self.shared.instance
        words[control + C_RX_CPU] = incoming_cpu(kernel_socket) & U64
        slot.set_state(state)

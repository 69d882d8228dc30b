"""Socket commands: taking the entries of the command queues an application flagged, validating and executing them.

Producers are untrusted: every entry and every index an application controls is validated; a bad one fails
that socket (state ST_ERROR + errno, notification EV_ERR) and nothing else.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from collections import deque

from .. import native
from ..layout import (
    C_ADDR_FAMILY,
    C_ADDR_IP0,
    C_ADDR_IP1,
    C_ADDR_PORT,
    C_ERR,
    C_OPTVAL,
    C_RX_CPU,
    C_RX_HEAD,
    C_TX_TAIL,
    EV_ACCEPT,
    H_PENDING,
    OP_NAMES,
    ST_ACCEPTABLE,
    ST_CLOSED,
    ST_CONNECTED,
    ST_CONNECTING,
    ST_ERROR,
    ST_LISTENING,
    ST_OPEN,
    ST_TX_SHUT,
    BadEntry,
    Op,
    addr_words,
    check_ring,
    decode_addr,
    decode_command,
    encode_addr,
    listen_group,
)
from ..queues import CORRUPT, EMPTY
from .datapath import DataPath
from .kernel import EPOLL_IN, KernelSockets, attach_reuseport_program, incoming_cpu, reuseport_program, socket_as
from .notifications import Notifier
from .state import U64, Application, SharedState, SocketSlot
from .trace import COMMAND

log = logging.getLogger("isostackd")

MAX_BACKLOG = 1024
CLOSE_LINGER_S = 5.0
MAX_DEBT_PASSES = 4  # an application's overspent time is paid in at most this many passes' credit


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _reuseport(kernel_socket: socket.socket) -> bool:
    """Whether the socket asked to join a SO_REUSEPORT group: its EADDRINUSE is then the kernel's same-uid rule
    (the group is another uid's; kernel.socket_as) or a holder of the port that did not ask for one."""
    try:
        return bool(kernel_socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return False


class CommandExecutor:
    """Reads the command queues of the sockets whose pending bit is set and carries the commands out."""

    def __init__(self, shared: SharedState, kernel_sockets: KernelSockets, notifier: Notifier, datapath: DataPath,
                 unprivileged_port_start: int = 1024):
        self.shared = shared
        self.kernel_sockets = kernel_sockets
        self.notifier = notifier
        self.datapath = datapath
        self.unprivileged_port_start = unprivileged_port_start
        self.clock = time.perf_counter_ns  # what a command costs (the fairness tests put a clock of their own)

    def take_commands(self, app: Application) -> bool:
        """Execute the commands of the sockets whose bit is set in the application's pending bitmap.

        Fairness between applications is a deficit round-robin in time: every pass, an application with
        commands pending gets Limits.app_budget_us of credit, each command is charged the time it took (a
        GETSOCKOPT costs a system call, a SEND almost nothing) and the application stops once its credit is
        spent.  What it overspent it pays in the next passes (at most MAX_DEBT_PASSES of them); an application
        whose queues ran empty keeps neither credit nor debt.  So each busy application gets about the same
        time per pass however cheap or costly its commands are, and the data path (after the commands, every
        pass) waits at most that long per hammering application (`time_deferred` counts the cut passes).
        Limits.queue_budget (per socket) and Limits.app_budget (per application) bound the count of commands
        in one pass as well (`budget_deferred`).  What is left keeps its pending bit for a later pass, and
        the next pass starts at the socket after the last one served, so one flooding socket does not starve
        the application's others."""
        words = app.region.q
        pending = [word for word in range(app.pending_words) if words[H_PENDING + word]]
        if not pending:
            app.command_credit_ns = 0
            return False
        limits = self.shared.limits
        stats = self.shared.stats
        quantum = limits.app_budget_us * 1000
        credit = min(app.command_credit_ns + quantum, quantum)
        if credit <= 0:  # still paying for an earlier pass: its bits stay set
            app.command_credit_ns = credit
            stats["time_deferred"] += 1
            return False
        indices = []
        for word in pending:
            bits = native.xchg64(app.pending_addr + word * 8, 0)
            while bits:
                lowest = bits & -bits
                indices.append(word * 64 + lowest.bit_length() - 1)
                bits ^= lowest
        cursor = app.command_cursor
        if cursor:
            indices = [i for i in indices if i >= cursor] + [i for i in indices if i < cursor]
        now = self.clock()
        deadline = now + credit
        budget = limits.app_budget
        sockets = app.sockets
        did_work = False
        left = False  # commands may be waiting after this pass
        for n, index in enumerate(indices):
            if budget <= 0 or now >= deadline:  # the rest waits for the next pass, which starts with it
                for rest in indices[n:]:
                    native.fetch_or64(app.pending_addr + (rest >> 6) * 8, 1 << (rest & 63))
                if budget <= 0:
                    stats["budget_deferred"] += 1
                app.command_cursor = index
                left = True
                break
            if index >= len(sockets):
                continue
            taken, more, now = self._socket_commands(sockets[index], min(budget, limits.queue_budget), deadline)
            budget -= taken
            did_work |= taken > 0
            if more:
                native.fetch_or64(app.pending_addr + (index >> 6) * 8, 1 << (index & 63))
                if now < deadline:  # its queue's budget
                    stats["budget_deferred"] += 1
                app.command_cursor = index + 1 if index + 1 < len(sockets) else 0
                left = True
        if left and now >= deadline:
            stats["time_deferred"] += 1
        app.command_credit_ns = max(deadline - now, -MAX_DEBT_PASSES * quantum) if left else 0
        return did_work

    def _socket_commands(self, slot: SocketSlot, budget: int, deadline: int) -> tuple[int, bool, int]:
        """Execute up to `budget` commands of the slot's queue, until the clock reaches `deadline`: (entries
        taken, stopped by a budget with a command waiting, the time it stopped).  A corrupt queue
        counts as one entry taken."""
        taken = 0
        command_queue = slot.command_queue
        stats = self.shared.stats
        lock = self.shared.lock
        clock = self.clock
        now = clock()
        while not slot.dead:
            if lock:
                lock.acquire()
            state, view = command_queue.poll()
            if state == EMPTY or taken >= budget or now >= deadline:  # (a budget: only if a command waits)
                if view is not None:
                    view.release()
                if lock:
                    lock.release()
                return taken, state != EMPTY, now
            taken += 1
            if state == CORRUPT:
                if lock:
                    lock.release()
                slot.dead = True
                stats["bad_entries"] += 1
                self.notifier.fail(slot, errno.EPROTO,
                                   f"command queue slot {command_queue.head} has a corrupt sequence number")
                return taken, False, clock()
            try:
                command = decode_command(view, command_queue.head, slot.index, slot.app.geometry)
            except BadEntry as e:
                view.release()
                command_queue.release()
                if lock:
                    lock.release()
                stats["bad_entries"] += 1
                self.notifier.fail(slot, e.err, e.reason)
                now = clock()
                continue
            view.release()
            command_queue.release()
            if lock:
                lock.release()
            stats["commands"] += 1
            if self.shared.trace is not None:
                self.shared.trace(COMMAND, slot.index)
            try:
                self._execute(slot, command)
            except BadEntry as e:
                stats["bad_entries"] += 1
                self.notifier.fail(slot, e.err, e.reason)
            now = clock()
        return taken, False, now

    def _execute(self, slot: SocketSlot, command) -> None:
        op = command.op
        complete = self.notifier.complete
        if log.isEnabledFor(logging.DEBUG):
            log.debug("app %d sock %d: %s %s", slot.app.id, slot.index, OP_NAMES[op], command)
        if op == Op.CLOSE:
            self._close(slot, command.pos)
            return
        if slot.state & ST_ERROR:
            complete(slot, command.pos, -(slot.app.region.q[slot.control_word + C_ERR] or errno.EBADF))
            return
        if op == Op.SOCKET:
            if slot.kernel_socket is not None or (slot.state and not slot.state & ST_CLOSED):
                raise BadEntry(errno.EBADF, "SOCKET on a slot that is in use")
            self._check_start(slot)
            app = slot.app
            if app.kernel_sockets >= self.shared.limits.max_kernel_sockets:
                self.shared.stats["app_socket_limit"] += 1
                complete(slot, command.pos, -errno.EMFILE)
                return
            try:  # EMFILE, EAFNOSUPPORT (no IPv6), EINVAL...: that command fails, as socket() would
                kernel_socket = socket_as(app.uid, command.a, command.b)
            except OSError as e:
                complete(slot, command.pos, -(e.errno or errno.EIO))
                return
            self.kernel_sockets.adopt(slot, kernel_socket, ST_OPEN)
            complete(slot, command.pos, 0)
            return
        if slot.kernel_socket is None:
            raise BadEntry(errno.EBADF, f"{OP_NAMES[op]} on a socket that is not open")
        if op == Op.SEND:
            self._send(slot, command.a)
            return
        kernel_socket = slot.kernel_socket
        try:
            if op == Op.BIND:
                address = self._address(slot, command)
                if 0 < address[1] < self.unprivileged_port_start and slot.app.uid != 0:
                    self.shared.stats["privileged_port_refused"] += 1
                    complete(slot, command.pos, -errno.EACCES)
                    return
                kernel_socket.bind((*address,))
                complete(slot, command.pos, 0)
            elif op == Op.LISTEN:
                self._listen(slot, command)
            elif op == Op.ACCEPT:
                self._accept(slot, command)
            elif op == Op.CONNECT:
                self._connect(slot, command)
            elif op == Op.SHUTDOWN:
                self._shutdown(slot, command)
            elif op == Op.SETSOCKOPT:
                kernel_socket.setsockopt(command.a, command.b, command.c)
                complete(slot, command.pos, 0)
            elif op == Op.GETSOCKOPT:
                slot.app.region.q[slot.control_word + C_OPTVAL] = kernel_socket.getsockopt(command.a, command.b) & U64
                complete(slot, command.pos, 0)
            elif op in (Op.GETSOCKNAME, Op.GETPEERNAME):
                address = kernel_socket.getsockname() if op == Op.GETSOCKNAME else kernel_socket.getpeername()
                self._store_address(slot, address)
                complete(slot, command.pos, 0)
        except OSError as e:
            if e.errno == errno.EADDRINUSE and op in (Op.BIND, Op.LISTEN) and _reuseport(kernel_socket):
                self.shared.stats["reuseport_refused"] += 1
            complete(slot, command.pos, -(e.errno or errno.EIO))

    @staticmethod
    def _check_start(slot: SocketSlot) -> None:
        """The front-end's tx tail and rx head where a new connection's rings start: our indices begin there
        and only ever grow by bytes moved, so starting below 2**63 keeps them clear of 2**64 forever."""
        words = slot.app.region.q
        for word, what in ((C_TX_TAIL, "tx tail"), (C_RX_HEAD, "rx head")):
            if words[slot.control_word + word] >= 1 << 63:
                raise BadEntry(errno.EFAULT, f"{what} {words[slot.control_word + word]} where a socket starts")

    @staticmethod
    def _address(slot: SocketSlot, command) -> tuple:
        if command.a != slot.kernel_socket.family:
            raise BadEntry(errno.EAFNOSUPPORT,
                           f"address family {command.a} on a family {slot.kernel_socket.family} socket")
        return decode_addr(command.a, command.b, command.ip)

    @staticmethod
    def _store_address(slot: SocketSlot, address: tuple) -> None:
        family = slot.kernel_socket.family if slot.kernel_socket is not None else socket.AF_INET
        port, ip = encode_addr(family, address)
        family_word, port_word, ip_low, ip_high = addr_words(family, port, ip)
        words = slot.app.region.q
        control = slot.control_word
        words[control + C_ADDR_FAMILY], words[control + C_ADDR_PORT] = family_word, port_word
        words[control + C_ADDR_IP0], words[control + C_ADDR_IP1] = ip_low, ip_high

    # ------------------------------------------------------------------ passive opens

    def _listen(self, slot: SocketSlot, command) -> None:
        if command.b and self._group_shared_with_others(slot):
            self.shared.stats["steering_refused"] += 1
            self.notifier.complete(slot, command.pos, -errno.EPERM)
            return
        slot.kernel_socket.listen(command.a)
        if command.b:  # one member of a multi-instance reuseport group: steer SYNs to their queue's owner
            attach_reuseport_program(slot.kernel_socket,
                                     reuseport_program(*listen_group(command.b, command.c, command.ip)))
            self.shared.stats["reuseport_programs"] += 1
        slot.backlog = deque()
        slot.backlog_max = max(16, min(command.a, MAX_BACKLOG))
        slot.set_state(slot.state | ST_LISTENING)
        self.kernel_sockets.register(slot, select.EPOLLIN)
        self.notifier.complete(slot, command.pos, 0)

    def _group_shared_with_others(self, slot: SocketSlot) -> bool:
        """Whether a socket of another application is bound where this one is (same family, type and port,
        overlapping address): the reuseport group it would steer is not this application's alone."""
        mine = slot.kernel_socket
        name = mine.getsockname()
        for other in self.shared.by_fd.values():
            theirs = other.kernel_socket
            if other.app is slot.app or theirs is None or theirs.family != mine.family or theirs.type != mine.type:
                continue
            try:
                other_name = theirs.getsockname()
            except OSError:
                continue
            if other_name[1] == name[1] and (other_name[0] == name[0] or _wildcard(other_name[0])
                                             or _wildcard(name[0])):
                return True
        return False

    def _accept(self, slot: SocketSlot, command) -> None:
        complete = self.notifier.complete
        if not slot.state & ST_LISTENING:
            complete(slot, command.pos, -errno.EINVAL)
            return
        new = slot.app.sockets[command.a]
        if new.kernel_socket is not None or new.dead or (new.state and not new.state & ST_CLOSED):
            raise BadEntry(errno.EBADF, f"ACCEPT into socket {command.a}, which is in use")
        self.fill_backlog(slot)
        if not slot.backlog:
            complete(slot, command.pos, -errno.EAGAIN)
            return
        try:
            self._check_start(new)
        except BadEntry as e:  # the slot to accept into is unusable: fail it, the connection stays queued
            self.notifier.fail(new, e.err, e.reason)
            complete(slot, command.pos, -e.err)
            return
        kernel_socket, address = slot.backlog.popleft()
        slot.app.kernel_sockets -= 1  # adopt counts it again
        self.kernel_sockets.adopt(new, kernel_socket, ST_OPEN | ST_CONNECTED)
        self._store_address(new, address)
        self.kernel_sockets.register(new, EPOLL_IN)
        if not slot.backlog:
            slot.set_state(slot.state & ~ST_ACCEPTABLE)
            self.kernel_sockets.register(slot, select.EPOLLIN)
        complete(slot, command.pos, command.a)

    def fill_backlog(self, slot: SocketSlot) -> None:
        """Accept what the kernel queued on a listening socket, up to its backlog; tell the front-end."""
        app = slot.app
        while len(slot.backlog) < slot.backlog_max:
            if app.kernel_sockets >= self.shared.limits.max_kernel_sockets:
                self.shared.stats["app_socket_limit"] += 1  # the connections wait in the kernel's queue
                break
            try:
                slot.backlog.append(slot.kernel_socket.accept())
                app.kernel_sockets += 1
            except BlockingIOError:
                break
            except OSError as e:
                log.info("accept on app %d socket %d: %s", slot.app.id, slot.index, e)
                break
        if slot.backlog:
            if not slot.state & ST_ACCEPTABLE:
                slot.set_state(slot.state | ST_ACCEPTABLE)
                self.notifier.post(slot, EV_ACCEPT)
            if len(slot.backlog) >= slot.backlog_max or app.kernel_sockets >= self.shared.limits.max_kernel_sockets:
                self.kernel_sockets.register(slot, 0)  # stop the level-triggered wake-ups until the app accepts

    # ------------------------------------------------------------------ active opens

    def _connect(self, slot: SocketSlot, command) -> None:
        if slot.state & (ST_CONNECTED | ST_CONNECTING | ST_LISTENING):
            self.notifier.complete(slot, command.pos, -errno.EISCONN)
            return
        err = slot.kernel_socket.connect_ex(self._address(slot, command))
        if err == 0:
            self.connected(slot, command.pos)
        elif err == errno.EINPROGRESS:
            slot.connect_pos = command.pos
            slot.set_state(slot.state | ST_CONNECTING)
            self.kernel_sockets.register(slot, select.EPOLLOUT)
        else:
            self.notifier.complete(slot, command.pos, -err)

    def connected(self, slot: SocketSlot, pos: int) -> None:
        slot.app.region.q[slot.control_word + C_RX_CPU] = incoming_cpu(slot.kernel_socket) & U64
        slot.set_state((slot.state & ~ST_CONNECTING) | ST_CONNECTED)
        self.kernel_sockets.register(slot, EPOLL_IN)
        self.notifier.complete(slot, pos, 0)
        if slot.app.region.q[slot.control_word + C_TX_TAIL] != slot.tx_head:  # data queued while connecting
            self.datapath.start_drain(slot)

    def connect_finished(self, slot: SocketSlot, events: int) -> None:
        """A kernel event on a socket whose non-blocking connect is in progress."""
        err = slot.kernel_socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0 and events & select.EPOLLOUT:
            pos, slot.connect_pos = slot.connect_pos, -1
            self.connected(slot, pos)
        elif err:
            pos, slot.connect_pos = slot.connect_pos, -1
            slot.set_state(slot.state & ~ST_CONNECTING)
            self.kernel_sockets.register(slot, 0)
            self.notifier.complete(slot, pos, -err)

    # ------------------------------------------------------------------ send, shutdown, close

    def _send(self, slot: SocketSlot, tail_at_post: int) -> None:
        words = slot.app.region.q
        tail = words[slot.control_word + C_TX_TAIL]
        check_ring(slot.tx_head, tail, slot.app.geometry.tx_size, "tx")
        if not slot.tx_head - slot.app.geometry.tx_size <= tail_at_post <= tail:
            raise BadEntry(errno.EFAULT, f"SEND names tx index {tail_at_post}, ring is at {slot.tx_head}..{tail}")
        if slot.state & ST_TX_SHUT:
            raise BadEntry(errno.EPIPE, "SEND after shutdown")
        if slot.send_owed >= 0:  # the first SEND after an adoption: the owed one (late, not lost) or a newer one
            if tail_at_post <= slot.send_owed:
                self.shared.stats["tx_stranded_late_send"] += 1
            slot.send_owed = -1
        self.datapath.start_drain(slot)

    def _shutdown(self, slot: SocketSlot, command) -> None:
        """As the kernel's shutdown(SHUT_WR): it returns at once and the FIN follows the queued data.  With data
        still in the tx ring the command completes now (further sends fail: ST_TX_SHUT) and the kernel socket is
        shut down once the ring is drained (DataPath.tx_idle); the application does not wait for the drain,
        which on a slow connection can take long."""
        if (command.a in (socket.SHUT_WR, socket.SHUT_RDWR)
                and slot.app.region.q[slot.control_word + C_TX_TAIL] != slot.tx_head):
            slot.shutdown_pos = command.pos
            slot.shutdown_how = command.a
            slot.set_state(slot.state | ST_TX_SHUT)
            self.notifier.complete(slot, command.pos, 0)
            self.datapath.start_drain(slot)
            return
        self.datapath.shutdown(slot, command.a, command.pos)

    def _close(self, slot: SocketSlot, pos: int) -> None:
        """Graceful close: queued tx bytes still go out (bounded by CLOSE_LINGER_S), then the slot is free."""
        if slot.kernel_socket is not None and slot.state & ST_CONNECTED and not slot.state & ST_ERROR:
            try:
                used = check_ring(slot.tx_head, slot.app.region.q[slot.control_word + C_TX_TAIL],
                                  slot.app.geometry.tx_size, "tx")
            except BadEntry:
                used = 0
            if used:
                slot.close_pos = pos
                slot.close_deadline = time.monotonic() + CLOSE_LINGER_S
                self.shared.closing.add(slot)
                self.datapath.start_drain(slot)
                return
        self.datapath.finish_close(slot, pos)

"""The dispatcher's loop: one process pinned to a dedicated CPU that serves every attached application.

One loop
  1. polls its epoll set without blocking (attach socket, application connections, kernel sockets, kick fd),
  2. takes the commands of every socket whose bit is set in an application's pending bitmap (commands.py),
  3. drains the tx rings it is draining and fills rx rings (datapath.py),
  4. rings the doorbells of the notification rings it posted to, if someone sleeps on them (notifications.py).
Between loops the polling policy (polling.py) decides whether to spin, nap or sleep in epoll; before a sleep
the dispatcher announces it (H_DISP_SLEEPING: the front-end kicks it through an eventfd when it posts a command
meanwhile), ends the draining grace of the empty tx rings (so the next send posts SEND and kicks it) and lets
the watchdog look for stranded tx rings (watchdog.py).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from .. import native
from ..attach import DEFAULT_SOCKET
from ..layout import H_DISP_SLEEPING, H_PENDING, ST_CONNECTING, ST_LISTENING
from .applications import Applications
from .commands import CommandExecutor
from .datapath import DataPath
from .kernel import BusyPoll, KernelSockets, listen_attach_socket, unprivileged_port_start
from .notifications import Notifier
from .polling import PollingPolicy
from .ratelimit import PREFIXES, PeerWarningLimit
from .state import Application, Limits, SharedState, SocketSlot
from .trace import KERNEL_EVENT
from .trace import from_env as trace_from_env
from .watchdog import StrandedRingWatchdog

log = logging.getLogger("isostackd")

RECEIVE_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP


class Dispatcher:
    """Owns every kernel socket of the attached applications and runs the loop that serves them."""

    def __init__(self, path: str = DEFAULT_SOCKET, cpu: int | None = None, busy_poll_us: int = 1000,
                 uncontended_locks: bool = False, sleep_ms: int = 100, instance: int = 0,
                 queues: set[int] | None = None, so_busy_poll_us: int = 50, epoll_busy_poll_us: int = -1,
                 nap_max_us: int = 1000, adaptive_poll: bool = True,
                 proc_root: str = "/proc", limits: Limits | None = None):
        self.path = path
        self.sleep_ms = sleep_ms
        self.running = True
        self.policy = PollingPolicy(busy_poll_us, nap_max_us, adaptive_poll)
        self.stats = {"loops": 0, "commands": 0, "sends": 0, "send_bytes": 0, "recvs": 0, "recv_bytes": 0,
                      "bad_entries": 0, "sleeps": 0, "naps": 0, "poll_us": busy_poll_us,
                      "nap_us": 0, "rung": 0, "saved": 0, "apps_attached": 0, "apps_detached": 0,
                      "reuseport_programs": 0, "so_busy_poll_us": so_busy_poll_us, "so_busy_poll_set": 0,
                      "so_busy_poll_failed": 0, "epoll_busy_poll_us": None, "watch_writes": 0, "watch_saved": 0,
                      "tx_stranded": 0, "tx_stranded_late_send": 0,
                      "bad_messages": 0, "apps_failed": 0, "app_failures": {}, "attach_refused": 0,
                      "attach_refused_limit": 0, "attach_failed": 0, "accept_failed": 0, "handshakes_dropped": 0,
                      "handshakes_timed_out": 0, "watch_limit": 0, "app_socket_limit": 0, "budget_deferred": 0,
                      "time_deferred": 0,
                      "eventfd_full": 0, "privileged_port_refused": 0, "reuseport_refused": 0,
                      "steering_refused": 0, "warnings_suppressed": 0}
        self.warnings = PeerWarningLimit(PREFIXES, on_suppressed=self._warning_suppressed)
        log.addFilter(self.warnings)
        self.busy_poll = BusyPoll(self.stats, instance, so_busy_poll_us, epoll_busy_poll_us, proc_root)
        self.shared = SharedState(epoll=select.epoll(), instance=instance,
                                  lock=threading.Lock() if uncontended_locks else None,
                                  membarrier=native.membarrier_supported(), stats=self.stats,
                                  limits=limits or Limits(), trace=trace_from_env())
        epoll = self.shared.epoll
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        epoll.register(self.kick_fd, select.EPOLLIN)
        self.listener = listen_attach_socket(path)
        epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.kernel_sockets = KernelSockets(self.shared, self.busy_poll)
        self.notifier = Notifier(self.shared, self.kernel_sockets)
        self.datapath = DataPath(self.shared, self.kernel_sockets, self.notifier)
        self.commands = CommandExecutor(self.shared, self.kernel_sockets, self.notifier, self.datapath,
                                        unprivileged_port_start(proc_root))
        self.applications = Applications(self.shared, self.kernel_sockets, self.listener, self.kick_fd, cpu,
                                         None if queues is None else sorted(queues), so_busy_poll_us)
        self.watchdog = StrandedRingWatchdog(self.shared, self.datapath)

    def _warning_suppressed(self) -> None:
        self.stats["warnings_suppressed"] += 1

    def close(self) -> None:
        self.busy_poll.restore()
        self.notifier.eventfds.close()
        log.removeFilter(self.warnings)
        for app in list(self.shared.apps.values()):
            self.applications.detach(app, "dispatcher stopping")
        self.applications.close()
        self.shared.epoll.close()
        self.listener.close()
        os.close(self.kick_fd)
        if self.shared.trace is not None:
            self.shared.trace.dump()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _kernel_event(self, slot: SocketSlot, events: int) -> bool:
        if slot.kernel_socket is None:
            return False
        if slot.state & ST_LISTENING:
            self.commands.fill_backlog(slot)
            return True
        if slot.state & ST_CONNECTING:
            self.commands.connect_finished(slot, events)
            return True
        did_work = False
        if events & select.EPOLLOUT:
            self.datapath.writable(slot)
            did_work = True
        if events & RECEIVE_EVENTS:
            did_work |= self.datapath.receive(slot)
        return did_work

    def _app_failed(self, app: Application, reason: str) -> None:
        """The last line of defence: whatever went wrong on one application's path closes that application
        (counted by reason), and the loop goes on serving the others."""
        if app.detached:
            return
        stats = self.stats
        stats["apps_failed"] += 1
        stats["app_failures"][reason] = stats["app_failures"].get(reason, 0) + 1
        log.error("app %d closed: %s", app.id, reason)
        try:
            self.applications.detach(app, reason)
        except Exception:  # noqa: BLE001 - its memory may stay mapped; the loop must go on
            log.exception("app %d: detach failed", app.id)

    def _guarded(self, app: Application, step, *args) -> bool:
        try:
            return bool(step(*args))
        except Exception as e:  # noqa: BLE001 - see _app_failed
            log.exception("app %d: unexpected %s", app.id, type(e).__name__)
            self._app_failed(app, f"unexpected {type(e).__name__} in {step.__name__}")
            return True

    def poll_once(self, timeout: float = 0) -> bool:
        """One loop: events, commands, tx drains, rx credits, lingering closes, doorbells.  True if it did work."""
        shared = self.shared
        applications = self.applications
        guarded = self._guarded
        did_work = False
        shared.loop_latency = False
        shared.loop_fill = 0.0
        trace = shared.trace
        for fd, events in shared.epoll.poll(timeout):
            shared.loop_latency = True
            slot = shared.by_fd.get(fd)
            if slot is not None:
                if trace is not None:
                    trace(KERNEL_EVENT, slot.index)
                did_work |= guarded(slot.app, self._kernel_event, slot, events)
            elif fd == self.kick_fd:
                try:
                    os.eventfd_read(self.kick_fd)
                except BlockingIOError:
                    pass
            elif fd == self.listener.fileno():
                applications.accept()
                did_work = True
            elif fd in applications.handshakes:
                applications.hello(fd)
                did_work = True
            elif fd in shared.apps:
                app = shared.apps[fd]
                guarded(app, applications.message, app)
                did_work = True
        apps = list(shared.apps.values())
        if len(apps) > 1:  # round-robin: a different application goes first every loop
            start = self.stats["loops"] % len(apps)
            apps = apps[start:] + apps[:start]
        for app in apps:
            if not app.detached and guarded(app, self.commands.take_commands, app):
                did_work = shared.loop_latency = True
        for slot in list(shared.tx_active):
            if not slot.app.detached:
                did_work |= guarded(slot.app, self.datapath.drain, slot)
        for slot in list(shared.rx_stalled):
            if not slot.app.detached and guarded(slot.app, self.datapath.unstall, slot):
                did_work = True
        if shared.closing:
            self.datapath.expire_lingering_closes()
        self.notifier.fail_bad_rings()
        self.notifier.ring_doorbells()
        while shared.failed_apps:
            self._app_failed(*shared.failed_apps.pop())
        if applications.handshakes or applications.listener_paused_until:
            now = time.monotonic()
            applications.expire_handshakes(now)
            applications.resume_listening(now)
        self.stats["loops"] += 1
        return did_work

    def sleep_until_woken(self, nap_s: float = 0.0) -> bool:
        """Announce sleep to every app, look once more, then block in epoll until a kick or an event (a nap:
        at most `nap_s` seconds, while tx rings are being drained)."""
        shared = self.shared
        if not nap_s:
            self.datapath.release_idle_rings()
            self.watchdog.check_if_due(time.monotonic())
        for app in shared.apps.values():
            app.region.q[H_DISP_SLEEPING] = 1
        native.fence()
        pending = any(app.region.q[H_PENDING + w] for app in shared.apps.values() for w in range(app.pending_words))
        timeout = self.policy.sleep_timeout(commands_pending=pending, nap_s=nap_s, tx_active=bool(shared.tx_active),
                                            polled_work=bool(shared.rx_stalled or shared.closing),
                                            sleep_ms=self.sleep_ms)
        if nap_s and not pending:
            self.stats["naps"] += 1
        if not nap_s:
            self.stats["sleeps"] += 1
        did_work = self.poll_once(timeout)
        for app in shared.apps.values():
            app.region.q[H_DISP_SLEEPING] = 0
        return did_work

    def run(self) -> None:
        """Busy-poll while work arrives; nap between drains of streaming rings (aggregation: one kernel send
        takes what accumulated meanwhile) and while full rx rings wait for their readers (one receive then
        refills much); sleep in epoll after an adaptive poll window without work."""
        policy = self.policy
        shared = self.shared
        policy.worked()
        while self.running:
            if self.poll_once():
                policy.worked()
                while self.running and policy.should_nap(shared.loop_latency, shared.loop_fill):
                    if not self.sleep_until_woken(policy.nap_s):
                        break
                    policy.napped(shared.loop_fill, shared.loop_latency)
                    self.stats["nap_us"] = policy.nap_us
            elif (shared.rx_stalled or shared.tx_blocked) and not shared.tx_active and policy.nap_max_s:
                # the rings with work wait, for their readers (full rx rings) or for the kernel (EPOLLOUT):
                # nap (kernel events and kicks still wake us) instead of spinning; longer while rx rings stay
                # full (napped: fill 0), shorter when an event ends the nap
                self.sleep_until_woken(policy.wait_s)
                policy.waited(shared.loop_fill, shared.loop_latency)
            elif policy.should_sleep():
                policy.sleep_starts()
                self.sleep_until_woken()
                policy.slept()
                if policy.adaptive:
                    self.stats["poll_us"] = policy.poll_us

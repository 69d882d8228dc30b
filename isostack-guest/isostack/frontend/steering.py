"""Steering: which isostackd instance owns a connection when several run.

New sockets go to the instances round-robin (Stack.pick_instance).  A listener is replicated on every
instance as one reuseport group whose BPF program gives each SYN to the owner of its rx queue (or of the CPU
it was processed on).  An active open binds a source port whose Toeplitz hash (rss.Classifier, read from
/etc/isostack/classifier.json by default) puts the connection's rx queue on the socket's own instance."""

from __future__ import annotations

import errno
import os
import socket as _socket

from .. import native, rss
from ..layout import C_OWNER, C_RX_CPU, C_WATCH_ARMED, Op, encode_addr, encode_listen_group
from .readiness import Readiness
from .slot import signed64

PORT_TRIES = 4096  # source ports hashed at most when looking for one that lands on the socket's instance


def load_classifier():
    """The guest's classifier settings (rss.DEFAULT_PATH), or None where the testbed wrote none."""
    path = os.environ.get("ISOSTACK_CLASSIFIER", rss.DEFAULT_PATH)
    try:
        return rss.Classifier.from_file(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def local_ip_towards(family: int, remote_ip: str) -> str:
    """The source address the kernel routes to remote_ip from (a connected UDP socket: no packet sent)."""
    with _socket.socket(family, _socket.SOCK_DGRAM) as u:
        u.connect((remote_ip, 9))
        return u.getsockname()[0]


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


class Steering(Readiness):
    """bind/listen across instances and the source-port choice of connect (see the module docstring)."""

    @property
    def instance(self) -> int:
        """The isostackd instance that owns this socket, as its dispatcher wrote it into the control page."""
        return self._words[self._control_word + C_OWNER]

    @property
    def rx_cpu(self) -> int:
        """The CPU the kernel last processed this connection's incoming packets on (at accept/connect), or -1."""
        return signed64(self._words[self._control_word + C_RX_CPU])

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
        (dispatcher.kernel.reuseport_program)."""
        stack = self._stack
        if not self._bound:
            self.bind(("0.0.0.0" if self.family == _socket.AF_INET else "::", 0))
        self._call(Op.GETSOCKNAME)
        addr = self._addr()
        members = [self]
        try:
            for inst in stack.instances:
                if inst is self._owner:
                    continue
                m = stack.socket(self.family, self.type, instance=inst.id)
                members.append(m)
                m.bind(addr)
            members.sort(key=lambda m: m._owner.id)
            cpus = [m._owner.cpu if isinstance(m._owner.cpu, int) and 0 <= m._owner.cpu < 255 else 254
                    for m in members]
            owners = {q: i for i, m in enumerate(members) for q in (m._owner.rx_queues or ()) if 0 <= q < 16}
            b, c, ip = encode_listen_group(cpus, owners)
            for m in members:
                m._call(Op.LISTEN, backlog, b, c, ip)
                if self._fileno >= 0 and m is not self:
                    m._owner.watch(m._slot, self._fileno)
                    native.xchg64(m._control_addr + C_WATCH_ARMED * 8, 1)
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
        stack, inst = self._stack, self._owner
        if self._bound or not self._multi() or stack.classifier is None or not inst.rx_queues:
            return
        remote_ip, remote_port = _numeric(self.family, address)
        local_ip = stack.local_ip(self.family, remote_ip)
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

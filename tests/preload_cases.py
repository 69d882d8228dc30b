"""Socket-semantics cases run by tests/test_isostack_preload.py twice: once on the kernel's sockets, once with
libisostack-preload.so preloaded (the same script, unmodified: Python's socket module calls libc). Each case
returns what it observed; the test requires the same observations from both stacks and the expected ones.

The peers are kernel sockets in this process: created while ISOSTACK_PRELOAD_OFF is set, which makes the shim
hand socket() to the kernel (docs/preload.md). Usage: python3 preload_cases.py [CASE...] -> JSON on stdout."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import struct
import sys
import threading
import time


@contextlib.contextmanager
def kernel_sockets():
    os.environ["ISOSTACK_PRELOAD_OFF"] = "1"
    try:
        yield
    finally:
        del os.environ["ISOSTACK_PRELOAD_OFF"]


def kernel_listener(family=socket.AF_INET, host="127.0.0.1") -> socket.socket:
    with kernel_sockets():
        srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(8)
    return srv


def pair():
    """(our socket, connected through the stack under test; the kernel peer)."""
    srv = kernel_listener()
    s = socket.create_connection(srv.getsockname(), timeout=10)
    s.settimeout(None)
    peer, _ = srv.accept()
    srv.close()
    return s, peer


def err(fn) -> str:
    """The errno name fn raised, or 'ok'."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"


def wait_poll(fd, events, timeout_s=10.0) -> int:
    p = select.poll()
    p.register(fd, events)
    got = p.poll(timeout_s * 1000)
    return got[0][1] if got else 0


def closed_port() -> int:
    with kernel_sockets():
        s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- the cases


def case_nonblocking_connect():
    srv = kernel_listener()
    s = socket.socket()
    s.setblocking(False)
    first = s.connect_ex(srv.getsockname())
    ev = wait_poll(s, select.POLLOUT)
    so_error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    peer_ok = s.getpeername() == srv.getsockname()
    again = s.connect_ex(srv.getsockname())
    s.close()
    srv.close()
    return {"first": errno.errorcode.get(first, first), "pollout": bool(ev & select.POLLOUT),
            "pollerr": bool(ev & select.POLLERR), "so_error": so_error, "peername": peer_ok,
            "again": errno.errorcode.get(again, again)}


def case_refused_connect():
    port = closed_port()
    s = socket.socket()
    s.setblocking(False)
    first = s.connect_ex(("127.0.0.1", port))
    ev = wait_poll(s, select.POLLOUT)
    so_error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s.close()
    b = socket.socket()
    blocking = err(lambda: b.connect(("127.0.0.1", port)))
    b.close()
    return {"first": errno.errorcode.get(first, first), "pollerr": bool(ev & select.POLLERR),
            "so_error": errno.errorcode.get(so_error, so_error), "blocking": blocking}


def case_eagain():
    s, peer = pair()
    s.setblocking(False)
    first = err(lambda: s.recv(10))
    peer.sendall(b"hello")
    wait_poll(s, select.POLLIN)
    got = s.recv(10)
    second = err(lambda: s.recv(10))
    flags_nonblock = bool(__import__("fcntl").fcntl(s.fileno(), __import__("fcntl").F_GETFL) & os.O_NONBLOCK)
    s.close()
    peer.close()
    return {"first": first, "got": got.decode(), "second": second, "fcntl_nonblock": flags_nonblock}


def case_partial_writes():
    s, peer = pair()
    s.setblocking(False)
    big = b"z" * (32 << 20)
    first = s.send(big)
    total, eagain = first, False
    for _ in range(100000):
        try:
            total += s.send(big)
        except BlockingIOError:
            eagain = True
            break
    received = [0]

    def drain():
        while True:
            b = peer.recv(1 << 20)
            if not b:
                return
            received[0] += len(b)

    t = threading.Thread(target=drain)
    t.start()
    ev = wait_poll(s, select.POLLOUT)  # the peer reads: credits come back
    s.setblocking(True)
    s.sendall(b"y" * 100000)
    total += 100000
    s.close()
    t.join(30)
    peer.close()
    return {"first_partial": 0 < first < len(big), "eagain": eagain, "pollout_after": bool(ev & select.POLLOUT),
            "all_arrived": received[0] == total}


def case_eof():
    s, peer = pair()
    peer.sendall(b"abc")
    peer.shutdown(socket.SHUT_WR)
    ev = wait_poll(s, select.POLLIN | select.POLLRDHUP)
    time.sleep(0.2)
    ev = wait_poll(s, select.POLLIN | select.POLLRDHUP)
    got = [s.recv(10), s.recv(10), s.recv(10)]
    s.sendall(b"after eof")  # half-closed: we may still send
    back = peer.recv(100)
    s.close()
    peer.close()
    return {"recvs": [g.decode() for g in got], "pollin": bool(ev & select.POLLIN),
            "rdhup": bool(ev & select.POLLRDHUP), "half_close_send": back.decode()}


def case_rst():
    s, peer = pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # RST
    ev = wait_poll(s, select.POLLIN)
    first = err(lambda: s.recv(10))
    s.close()
    return {"pollin": bool(ev & select.POLLIN), "pollerr": bool(ev & select.POLLERR), "recv": first}


def case_poll_mixed():
    s, peer = pair()
    r, w = os.pipe()
    p = select.poll()
    p.register(s, select.POLLIN)
    p.register(r, select.POLLIN)
    nothing = p.poll(50)
    os.write(w, b"x")
    pipe_only = sorted(fd == r and "pipe" or "sock" for fd, _ in p.poll(5000))
    os.read(r, 1)
    peer.sendall(b"data")
    sock_only = sorted(fd == r and "pipe" or "sock" for fd, _ in p.poll(5000))
    os.write(w, b"x")
    both = sorted(fd == r and "pipe" or "sock" for fd, _ in p.poll(5000))
    rl, wl, _ = select.select([s, r], [s], [], 5)
    selected = (sorted("sock" if x is s else "pipe" for x in rl), ["sock" for x in wl if x is s])
    s.recv(10)
    os.read(r, 1)
    waiter = {}

    def sleeper():
        t0 = time.monotonic()
        waiter["got"] = [fd == r and "pipe" or "sock" for fd, _ in p.poll(10000)]
        waiter["s"] = time.monotonic() - t0

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.3)
    peer.sendall(b"wake")  # a poll asleep on both wakes for the socket
    t.join(15)
    s.close()
    peer.close()
    os.close(r)
    os.close(w)
    return {"nothing": nothing, "pipe_only": pipe_only, "sock_only": sock_only, "both": both,
            "select": selected, "woken_by_socket": waiter.get("got"), "woke_in_time": waiter.get("s", 99) < 8}


def case_epoll_mixed():
    s, peer = pair()
    r, w = os.pipe()
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN)
    ep.register(r, select.EPOLLIN)
    nothing = ep.poll(0.05)
    peer.sendall(b"data")
    first = sorted("sock" if fd == s.fileno() else "pipe" for fd, _ in ep.poll(5))
    os.write(w, b"x")
    both = sorted("sock" if fd == s.fileno() else "pipe" for fd, _ in ep.poll(5))
    s.recv(10)
    os.read(r, 1)
    ep.modify(s.fileno(), select.EPOLLOUT)
    writable = [("sock", bool(ev & select.EPOLLOUT)) for fd, ev in ep.poll(5) if fd == s.fileno()]
    ep.unregister(s.fileno())
    peer.sendall(b"more")
    time.sleep(0.2)
    after_unregister = ep.poll(0.05)
    ep.close()
    s.close()
    peer.close()
    os.close(r)
    os.close(w)
    return {"nothing": nothing, "first": first, "both": both, "writable": writable,
            "after_unregister": after_unregister}


def case_close_while_blocked():
    s, peer = pair()
    out = {}

    def reader():
        try:
            out["got"] = s.recv(100).decode()
        except OSError as e:
            out["got"] = errno.errorcode.get(e.errno, str(e.errno))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)
    os.close(os.dup(0))  # unrelated fd traffic meanwhile
    fd = s.detach()
    os.close(fd)  # close under the blocked reader: the kernel keeps the socket until the reader returns
    time.sleep(0.3)
    still_blocked = t.is_alive()
    peer.sendall(b"late data")
    t.join(10)
    peer.settimeout(10)
    eof = peer.recv(100)  # the last reference went: the peer sees the close
    peer.close()
    return {"still_blocked": still_blocked, "reader": out.get("got"), "reader_returned": not t.is_alive(),
            "peer_eof": eof == b""}


def case_shutdown_while_blocked():
    s, peer = pair()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("got", s.recv(100)))
    t.start()
    time.sleep(0.3)
    s.shutdown(socket.SHUT_RD)
    t.join(10)
    returned = not t.is_alive()
    s.shutdown(socket.SHUT_WR)
    epipe = err(lambda: s.send(b"x"))
    peer.settimeout(10)
    eof = peer.recv(10)
    s.close()
    peer.close()
    return {"returned": returned, "got": out.get("got", b"?").decode(), "send_after_shut_wr": epipe,
            "peer_eof": eof == b""}


def case_options_and_names():
    s, peer = pair()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.settimeout(0.2)
    timed_out = err(lambda: s.recv(10))
    s.settimeout(None)
    out = {"nodelay": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
           "keepalive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
           "type": s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), "error": s.getsockopt(socket.SOL_SOCKET,
                                                                                          socket.SO_ERROR),
           "sockname": s.getsockname() == peer.getpeername(), "peername": s.getpeername() == peer.getsockname(),
           "rcvbuf_positive": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0,
           "recv_timeout": timed_out, "unconnected_send": err(lambda: socket.socket().send(b"x")),
           "unconnected_recv": err(lambda: socket.socket().recv(1)),
           "bad_shutdown": err(lambda: s.shutdown(7))}
    s.close()
    peer.close()
    return out


def case_dup_and_close():
    s, peer = pair()
    d = s.dup()
    s.close()
    d.sendall(b"via dup")
    got = peer.recv(100)
    peer.sendall(b"back")
    back = d.recv(100)
    os_dup = os.dup(d.fileno())
    d.close()
    os.write(os_dup, b"raw write")
    raw = peer.recv(100)
    os.close(os_dup)
    peer.settimeout(10)
    eof = peer.recv(10)
    peer.close()
    return {"got": got.decode(), "back": back.decode(), "raw": raw.decode(), "peer_eof": eof == b""}


def case_listen_accept():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    addr = srv.getsockname()
    srv.setblocking(False)
    nothing = err(srv.accept)
    with kernel_sockets():
        c = socket.socket()
    c.connect(addr)
    ev = wait_poll(srv, select.POLLIN)
    srv.setblocking(True)
    conn, peer_addr = srv.accept()
    c.sendall(b"ping")
    got = conn.recv(10)
    conn.sendall(b"pong")
    back = c.recv(10)
    names = peer_addr == c.getsockname() and conn.getsockname() == addr
    conn.close()
    eof = c.recv(10)
    c.close()
    srv.close()
    return {"nonblocking_accept": nothing, "pollin": bool(ev & select.POLLIN), "got": got.decode(),
            "back": back.decode(), "names": names, "eof": eof == b""}


def case_ipv6():
    try:
        srv = kernel_listener(socket.AF_INET6, "::1")
    except OSError:
        return {"skipped": "no IPv6 loopback"}
    s = socket.create_connection(srv.getsockname()[:2], timeout=10)
    peer, _ = srv.accept()
    s.sendall(b"six")
    got = peer.recv(10)
    out = {"family": s.family == socket.AF_INET6, "got": got.decode(), "peer": s.getpeername()[0]}
    s.close()
    peer.close()
    srv.close()
    return out


def case_udp_untouched():
    with kernel_sockets():
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"datagram", r.getsockname())
    r.settimeout(5)
    got = r.recv(100)
    u.close()
    r.close()
    return {"got": got.decode()}


def case_vectors_peek_waitall():
    s, peer = pair()
    s.sendmsg([b"ab", b"cd", b"ef"])
    os.writev(s.fileno(), [b"gh", b"ij"])
    peer.settimeout(10)
    got = b""
    while len(got) < 10:
        got += peer.recv(100)
    peer.sendall(b"hello world")
    wait_poll(s, select.POLLIN)
    time.sleep(0.1)
    peeked = s.recv(5, socket.MSG_PEEK)
    first, second = bytearray(3), bytearray(4)
    n, _anc, flags, _addr = s.recvmsg_into([first, second])
    rest = os.readv(s.fileno(), [bytearray(2), bytearray(2)])
    peer.sendall(b"x")
    peer.shutdown(socket.SHUT_WR)
    waited = s.recv(100, socket.MSG_WAITALL)  # the rest up to EOF
    s.close()
    peer.close()
    return {"gathered": got.decode(), "peeked": peeked.decode(), "scattered": [n, first.decode(), second.decode()],
            "recvmsg_flags": flags, "readv": rest, "waitall_to_eof": waited.decode()}


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def main(names: list[str]) -> int:
    out = {}
    for name in names or CASES:
        try:
            out[name] = CASES[name]()
        except Exception as e:  # noqa: BLE001 - reported, compared like any other observation
            out[name] = {"exception": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

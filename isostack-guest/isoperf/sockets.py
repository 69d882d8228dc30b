"""The data connections of either stack: kernel sockets ("legacy") or IsoStack sockets ("iso", same API).

The only module that touches the IsoStack runtime, and only lazily for ``--stack iso``: legacy runs stay
stdlib-only, as the guests (Debian's python3, no pip packages) run isoperf from an uploaded copy.
"""

from __future__ import annotations

import socket
import sys

from .errors import IsoperfError


def connect(host: str, port: int, timeout: float, stack: str = "legacy"):
    """A kernel socket ("legacy") or an IsoStack socket ("iso", same API) connected to host:port."""
    try:
        if stack == "iso":
            from isostack import frontend  # lazily: legacy runs stay stdlib-only

            sock = frontend.create_connection((host, port), timeout=timeout)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        if stack == "iso":
            raise IsoperfError(f"cannot open an IsoStack connection to {host}:{port}: {reason}") from None
        raise IsoperfError(f"cannot reach isoperf server at {host}:{port}: {reason}") from None
    return sock


def listen(bind: str, backlog: int, stack: str = "legacy"):
    """A listening kernel socket ("legacy") or IsoStack socket ("iso") on bind:<ephemeral port>: the server's
    data listener. IsoStack's passive opens go through isostackd like its active ones (listen, accept)."""
    try:
        if stack == "iso":
            from isostack import frontend  # lazily: legacy servers stay stdlib-only

            sock = frontend.socket()
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise IsoperfError(f"cannot open a {stack} listening socket: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, 0))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise IsoperfError(f"cannot listen on {bind} ({stack}): {e.strerror or e}") from None
    return sock


def set_nodelay(sock) -> None:
    """TCP_NODELAY on an rr/crr data socket (as sockperf does): a message over one MSS must not wait for an
    ACK of its first segments. Set on the server's sockets and the rr client's, outside the timed loop (the
    crr client's requests go out in one send on a new connection, and an extra control call per IsoStack
    connection would be timed)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def recv_exact(sock, view: memoryview, n: int) -> bool:
    """Fill view[:n] from sock; False on EOF before the first byte, IsoperfError on EOF inside it."""
    got = sock.recv_into(view, n)
    if got == n:
        return True
    if got == 0:
        return False
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise IsoperfError(f"connection closed inside a message ({got} of {n} bytes)")
        got += k
    return True


def _default_stack():
    """This process's default IsoStack attachment, or None (never imports the front-end itself)."""
    frontend = sys.modules.get("isostack.frontend")
    return getattr(frontend, "_default", None) if frontend is not None else None


def isostack_stats() -> dict | None:
    """The front-end's counters over the whole run (SEND commands posted, kicks, doorbells), or None."""
    stack = _default_stack()
    if stack is None:
        return None
    st = stack.stats()
    return {k: st[k] for k in ("send_posts", "kicks", "doorbells_rung", "doorbells_saved")}


def detach_isostack() -> None:
    """Detach this process's default IsoStack attachment (isostackd then frees its memory at once)."""
    stack = _default_stack()
    if stack is not None:
        stack.close()

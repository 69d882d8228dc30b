"""isostackd command lines for the guests: start an instance detached, wait for its socket, stop it, and where
its log and sockets are.

Apart from any I/O, like isoperf_cmd, so they are tested as text; instances.py runs them. Also the vCPU the
application gets when isostackd has the last ones (the isoperf client and the placement plan both need it).
"""

from __future__ import annotations

import shlex

from testbed.harness.guestcmd import GuestLayout

SOCKET = "/run/isostack/isostackd.sock"
INTERFACES = "eth0"
CLIENT_CPU = 0  # the application's vCPU when isostackd has the last one


def log_path(layout: GuestLayout, instance: int = 0) -> str:
    return f"{layout.log_dir}/isostackd.log" if instance == 0 else f"{layout.log_dir}/isostackd-{instance}.log"


def start_command(
    layout: GuestLayout,
    cpu: int,
    uncontended_locks: bool = False,
    instance: int = 0,
    queues: tuple[int, ...] | None = None,
    socket: str = SOCKET,
    so_busy_poll_us: int | None = None,
    nap_max_us: int | None = None,
    epoll_busy_poll_us: int | None = None,
) -> str:
    """Start isostackd (instance `instance`, owning `queues`, all when None) on `cpu` detached from the SSH
    session; prints its PID.

    Log and socket are removed first so neither an old log line nor an old socket passes for this daemon.
    """
    log = shlex.quote(log_path(layout, instance))
    sock = shlex.quote(socket)
    extra = f" --instance {instance}" if instance else ""
    if queues is not None:
        extra += f" --queues {','.join(str(q) for q in queues)}"
    if so_busy_poll_us is not None:
        extra += f" --so-busy-poll-us {so_busy_poll_us}"
    if nap_max_us is not None:
        extra += f" --nap-max-us {nap_max_us}"
    if epoll_busy_poll_us is not None:
        extra += f" --epoll-busy-poll-us {epoll_busy_poll_us}"
    if uncontended_locks:
        extra += " --uncontended-locks"
    return (
        f"rm -f {log} {sock}; nohup env {layout.isostackd()}"
        f" --cpu {cpu} --allow-shared --interfaces {INTERFACES}"
        f" --socket {sock}{extra} > {log} 2>&1 < /dev/null & echo $!"
    )


def cleanup_command() -> str:
    """Remove the sockets other instances may have left (a SIGKILLed isostackd cannot remove its own), so the
    front-end does not discover an instance that is not running."""
    stem = shlex.quote(SOCKET.rsplit(".", 1)[0])
    return f"rm -f {stem}-[0-9]*.sock; true"


def ready_command(pid: int, socket: str = SOCKET) -> str:
    """Exit 0 once isostackd's socket exists, 3 if it died (its log then says why), 1 if not yet."""
    return f"test -S {shlex.quote(socket)} && exit 0; kill -0 {pid} 2>/dev/null || exit 3; exit 1"


def stop_command(pid: int, grace_s: int = 5) -> str:
    """SIGTERM isostackd (it closes its applications' sockets and removes its socket), SIGKILL after grace_s."""
    return (
        f"kill {pid} 2>/dev/null || exit 0; for i in $(seq {grace_s * 10}); do kill -0 {pid} 2>/dev/null || exit 0;"
        f" sleep 0.1; done; kill -9 {pid} 2>/dev/null; true"
    )

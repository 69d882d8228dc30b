"""Who may connect to vhea's sockets (issue 12, vhea point 9), against a real `vhea serve`: control.sock is its
owner's only (mode 0600, and SO_PEERCRED checked on each connection: the same uid or root), port sockets are
0660 by default, `--socket-mode` / `--socket-group` open them to a front-end (QEMU) of another user.
"""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from vhea_helpers import serve_stats, vhea_serve, wait_for

NOBODY = 65534


def _as_nobody(path: str, request: bytes | None = None) -> str:
    """In a forked child of uid/gid 65534: connect to `path` (and send `request`, read the answer). Returns
    "refused: <errno name>", "closed" (vhea hung up without an answer) or "answered"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        result = "child failed"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
            except OSError as e:
                result = f"refused: {e.__class__.__name__}"
            else:
                result = "connected"
                if request is not None:
                    try:
                        s.sendall(request)
                        result = "answered" if s.recv(4096) else "closed"
                    except OSError:
                        result = "closed"
        finally:
            os.write(write_end, result.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.fixture
def open_sockdir(sockdir):
    os.chmod(sockdir, 0o755)  # reachable for the other uid: only the sockets' own modes keep it out
    return sockdir


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() a child to another user")
def test_another_user_cannot_use_the_control_socket_or_the_ports(open_sockdir):
    sockdir = open_sockdir
    old = os.umask(0)  # what the modes would be without vhea setting them: 0777
    try:
        with vhea_serve(sockdir, ["a", "b"]) as proc:
            control = os.path.join(sockdir, "control.sock")
            assert _mode(control) == 0o600
            assert _mode(os.path.join(sockdir, "a.sock")) == 0o660
            assert _as_nobody(control, b'{"cmd": "ping"}\n') == "refused: PermissionError"
            assert _as_nobody(os.path.join(sockdir, "a.sock")) == "refused: PermissionError"
            # a widened mode (chmod by hand) still does not let another user in: SO_PEERCRED is checked
            os.chmod(control, 0o666)
            assert _as_nobody(control, b'{"cmd": "ping"}\n') == "closed"
            assert wait_for(lambda: serve_stats(sockdir)["control"] == {"refused": 1})
            assert serve_stats(sockdir)["ports"]["a"]["closed"] == {}  # the owner (root) still uses it
            assert proc.poll() is None
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() a child to another user")
@pytest.mark.parametrize("extra, mode", [(("--socket-mode", "0666"), 0o666),
                                         (("--socket-group", str(NOBODY)), 0o660)], ids=["mode", "group"])
def test_a_front_end_of_another_user_may_connect_when_asked(open_sockdir, extra, mode):
    sockdir = open_sockdir
    with vhea_serve(sockdir, ["a", "b"], extra=extra):
        port = os.path.join(sockdir, "a.sock")
        assert _mode(port) == mode
        if "--socket-group" in extra:
            assert os.stat(port).st_gid == NOBODY
        assert _mode(os.path.join(sockdir, "control.sock")) == 0o600  # never widened by these options
        assert _as_nobody(port) == "connected"
        assert _as_nobody(os.path.join(sockdir, "control.sock")) == "refused: PermissionError"


def test_the_stats_reply_is_unchanged_for_the_owner(sockdir):
    with vhea_serve(sockdir, ["a"]):
        st = serve_stats(sockdir)
        assert st["control"] == {"refused": 0}
        assert json.loads(json.dumps(st))["ports"]["a"]["closed"] == {}

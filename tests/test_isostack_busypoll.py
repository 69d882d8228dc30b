"""isostackd's kernel busy polling: SO_BUSY_POLL on its kernel sockets, net.core.busy_poll while it runs (on a
fake procfs here), both reported in its stats and in the attach reply."""

import socket
import threading

import pytest

from isostack.dispatcher import SO_BUSY_POLL, Dispatcher
from isostack.frontend import Stack
from isostack.layout import Geometry

GEO = Geometry(max_sockets=4, tx_size=1 << 14, rx_size=1 << 14, notif_rings=1)


@pytest.fixture
def fake_proc(tmp_path):
    proc = tmp_path / "proc"
    (proc / "sys/net/core").mkdir(parents=True)
    (proc / "sys/net/core/busy_poll").write_text("0\n")
    return proc


def run_dispatcher(d):
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("so_us", [37, 0])
def test_so_busy_poll_on_kernel_sockets_and_epoll_sysctl_restored(tmp_path, fake_proc, so_us):
    sysctl = fake_proc / "sys/net/core/busy_poll"
    path = str(tmp_path / "d.sock")
    d = Dispatcher(path, None, busy_poll_us=200, sleep_ms=20, so_busy_poll_us=so_us, epoll_busy_poll_us=25,
                   proc_root=str(fake_proc))
    assert sysctl.read_text() == "25\n"
    assert d.stats["epoll_busy_poll_us"] == 25
    t = run_dispatcher(d)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        with Stack(path, GEO) as st:
            assert st.info["busy_poll"] == {"socket_us": so_us, "epoll_us": 25}
            s = st.create_connection(srv.getsockname(), timeout=5)
            peer, _ = srv.accept()
            (k,) = [x.k for x in d.by_fd.values()]
            assert k.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == so_us
            assert d.stats["so_busy_poll_set"] == (1 if so_us else 0)
            assert d.stats["so_busy_poll_failed"] == 0
            s.sendall(b"ok")
            assert peer.recv(2) == b"ok"
            s.close()
            peer.close()
    finally:
        d.running = False
        t.join(5)
        d.close()
        srv.close()
    assert sysctl.read_text() == "0\n"  # restored


def test_missing_sysctl_is_reported_not_fatal(tmp_path):
    d = Dispatcher(str(tmp_path / "d.sock"), None, epoll_busy_poll_us=25, proc_root=str(tmp_path / "nowhere"))
    assert d.stats["epoll_busy_poll_us"] is None
    d.close()


def test_sysctl_left_alone_by_default(tmp_path, fake_proc):
    d = Dispatcher(str(tmp_path / "d.sock"), None, proc_root=str(fake_proc))
    d.close()
    assert (fake_proc / "sys/net/core/busy_poll").read_text() == "0\n"
    assert d.stats["so_busy_poll_us"] == 50 and d.stats["epoll_busy_poll_us"] is None


def test_only_instance_0_writes_the_global_sysctl(tmp_path, fake_proc):
    sysctl = fake_proc / "sys/net/core/busy_poll"
    d1 = Dispatcher(str(tmp_path / "d1.sock"), None, epoll_busy_poll_us=25, proc_root=str(fake_proc), instance=1)
    assert sysctl.read_text() == "0\n" and d1.stats["epoll_busy_poll_us"] == 0
    d0 = Dispatcher(str(tmp_path / "d0.sock"), None, epoll_busy_poll_us=25, proc_root=str(fake_proc), instance=0)
    assert sysctl.read_text() == "25\n"
    d1.close()  # instance 1 leaving does not switch it off under instance 0
    assert sysctl.read_text() == "25\n"
    d0.close()
    assert sysctl.read_text() == "0\n"

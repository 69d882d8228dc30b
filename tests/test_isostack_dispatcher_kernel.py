"""isostackd's kernel glue (kernel.py): busy polling (SO_BUSY_POLL on its kernel sockets, net.core.busy_poll while
it runs, on a fake procfs here, both reported in its stats and in the attach reply) and the reuseport program
that steers SYNs to the instance owning their rx queue / CPU."""

import socket

import pytest

from isostack.dispatcher.kernel import (
    BPF_JEQ_K,
    BPF_LD_W_ABS,
    BPF_RET_K,
    SKF_AD_CPU,
    SKF_AD_OFF,
    SKF_AD_QUEUE,
    SO_BUSY_POLL,
    reuseport_program,
)
from isostack.dispatcher.loop import Dispatcher
from isostack.frontend import Stack
from isostack.layout import Geometry

GEO = Geometry(max_sockets=4, tx_size=1 << 14, rx_size=1 << 14, notif_rings=1)


@pytest.fixture
def fake_proc(tmp_path):
    proc = tmp_path / "proc"
    (proc / "sys/net/core").mkdir(parents=True)
    (proc / "sys/net/core/busy_poll").write_text("0\n")
    return proc


@pytest.mark.parametrize("so_us", [37, 0])
def test_so_busy_poll_on_kernel_sockets_and_epoll_sysctl_restored(dispatcher_thread, fake_proc, so_us):
    sysctl = fake_proc / "sys/net/core/busy_poll"
    running = dispatcher_thread(start=False, so_busy_poll_us=so_us, epoll_busy_poll_us=25, proc_root=str(fake_proc))
    path, d = running.path, running.dispatcher
    assert sysctl.read_text() == "25\n"
    assert d.stats["epoll_busy_poll_us"] == 25
    running.start()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        with Stack(path, GEO) as st:
            assert st.info["busy_poll"] == {"socket_us": so_us, "epoll_us": 25}
            s = st.create_connection(srv.getsockname(), timeout=5)
            peer, _ = srv.accept()
            (k,) = [x.kernel_socket for x in d.shared.by_fd.values()]
            assert k.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == so_us
            assert d.stats["so_busy_poll_set"] == (1 if so_us else 0)
            assert d.stats["so_busy_poll_failed"] == 0
            s.sendall(b"ok")
            assert peer.recv(2) == b"ok"
            s.close()
            peer.close()
    finally:
        running.close()
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


def run_cbpf(prog, queue_mapping, cpu):
    """The three classic BPF instructions reuseport_program uses, interpreted (A register only)."""
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == BPF_LD_W_ABS:
            anc = {SKF_AD_QUEUE: queue_mapping, SKF_AD_CPU: cpu}
            a = anc[(k - SKF_AD_OFF) & 0xFFFFFFFF]
            pc += 1
        elif code == BPF_JEQ_K:
            pc += 1 + (jt if a == k else jf)
        elif code == BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_reuseport_program_prefers_rx_queue_owner_then_cpu():
    prog = reuseport_program([2, 5], {0: 1, 1: 0})  # member 0 on CPU 2 owns queue 1; member 1 on CPU 5 owns 0
    assert len(prog) < 4096  # BPF_MAXINSNS
    assert run_cbpf(prog, queue_mapping=1, cpu=2) == 1  # rx queue 0 (queue_mapping is queue + 1) wins over CPU
    assert run_cbpf(prog, queue_mapping=2, cpu=5) == 0
    assert run_cbpf(prog, queue_mapping=0, cpu=5) == 1  # no rx queue recorded (loopback): the CPU decides
    assert run_cbpf(prog, queue_mapping=0, cpu=2) == 0
    assert run_cbpf(prog, queue_mapping=9, cpu=7) == 0xFFFFFFFF  # neither: out of range, the kernel hashes

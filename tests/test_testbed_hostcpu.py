"""testbed.hostcpu: host CPU time of processes and QEMU's vCPU threads, from canned /proc trees and this process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from proc_helpers import QEMU_ARGV, fake_process, stat_line

from testbed import hostcpu


def test_parse_stat_takes_utime_stime_and_last_cpu_after_the_comm_even_with_spaces_and_parens():
    line = stat_line(77, "CPU 1/TCG", 1234, 56, 3)
    assert hostcpu.parse_stat(line) == hostcpu.StatTimes(1234, 56, 3)
    odd = stat_line(78, "a) b (c", 10, 20, 1)  # comm may hold ") " itself: the last ")" closes it
    assert hostcpu.parse_stat(odd) == hostcpu.StatTimes(10, 20, 1)
    assert hostcpu.parse_stat(odd).ticks == 30
    with pytest.raises(hostcpu.ProcError, match="not a stat line"):
        hostcpu.parse_stat("77 (short) S 1 2")
    with pytest.raises(hostcpu.ProcError, match="not a stat line"):
        hostcpu.parse_stat("garbage")


def test_cpu_lists_and_affinity():
    assert hostcpu.parse_cpu_list("0-2,5\n") == [0, 1, 2, 5]
    assert hostcpu.parse_cpu_list("1") == [1]
    assert hostcpu.parse_affinity("Name:\tx\nCpus_allowed_list:\t0,2-3\n") == [0, 2, 3]
    assert hostcpu.parse_affinity("Name:\tx\n") is None


def test_vcpu_threads_are_found_by_name_in_a_canned_proc_tree(tmp_path):
    fake_process(tmp_path, 500, QEMU_ARGV, [
        (500, "qemu-system-x86", 100, 50, 0, "0-1"),
        (501, "call_rcu", 1, 0, 0, "0-1"),
        (503, "CPU 0/TCG", 400, 10, 0, "0"),
        (504, "CPU 1/TCG", 900, 20, 1, "1"),
        (505, "IO mon_iothread", 3, 1, 1, "0-1"),
    ])
    found = hostcpu.vcpu_threads(500, tmp_path)
    assert sorted(found) == [0, 1]
    assert found[1].tid == 504 and found[1].times == hostcpu.StatTimes(900, 20, 1) and found[1].affinity == [1]
    assert found[0].vcpu() == (0, "TCG")
    assert hostcpu.process_times(500, tmp_path).ticks == 100 + 50 + 1 + 410 + 920 + 4
    assert len(hostcpu.threads(500, tmp_path)) == 5


def test_kvm_and_single_threaded_tcg_thread_names(tmp_path):
    fake_process(tmp_path, 600, QEMU_ARGV, [(601, "CPU 0/KVM", 1, 1, 0, "0"), (602, "CPU 12/KVM", 2, 2, 1, "1")])
    assert {i: t.vcpu() for i, t in hostcpu.vcpu_threads(600, tmp_path).items()} == {0: (0, "KVM"), 12: (12, "KVM")}
    fake_process(tmp_path, 700, QEMU_ARGV, [(701, "ALL CPUs/TCG", 5, 0, 0, "0-1"), (702, "CPU x/TCG", 1, 0, 0, "0")])
    assert list(hostcpu.vcpu_threads(700, tmp_path)) == [hostcpu.ALL_VCPUS]


def test_a_thread_that_ends_while_read_is_left_out_and_a_missing_process_is_an_error(tmp_path):
    fake_process(tmp_path, 800, QEMU_ARGV, [(801, "CPU 0/TCG", 1, 1, 0, "0"), (802, "CPU 1/TCG", 1, 1, 0, "1")])
    (tmp_path / "800" / "task" / "802" / "stat").unlink()
    assert list(hostcpu.vcpu_threads(800, tmp_path)) == [0]
    with pytest.raises(hostcpu.ProcError, match="cannot list"):
        hostcpu.threads(999, tmp_path)
    with pytest.raises(hostcpu.ProcError, match="cannot read"):
        hostcpu.process_times(999, tmp_path)


def test_seconds_between_samples():
    before, after = hostcpu.StatTimes(100, 50, 0), hostcpu.StatTimes(250, 100, 1)
    assert hostcpu.seconds(before, after, 100) == 2.0
    assert hostcpu.seconds(after, before, 100) == 0.0  # a reused TID never gives negative time


def test_qemu_pid_file_per_libvirt_uri(monkeypatch):
    assert hostcpu.qemu_pid_file("qemu:///embed?root=/s/libvirt", "iso-a") == Path("/s/libvirt/run/qemu/iso-a.pid")
    assert hostcpu.qemu_pid_file("qemu:///system", "iso-a") == Path("/run/libvirt/qemu/iso-a.pid")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert hostcpu.qemu_pid_file("qemu:///session", "g") == Path("/run/user/7/libvirt/qemu/run/g.pid")
    remote = hostcpu.qemu_pid_file("qemu+ssh://lab2/system", "iso-a")
    assert isinstance(remote, str) and remote.startswith("the guest runs on another host")
    assert "another host" in hostcpu.qemu_pid_file("qemu://lab2/system", "iso-a")
    assert "needs ?root=DIR" in hostcpu.qemu_pid_file("qemu:///embed", "iso-a")
    assert "not a QEMU driver" in hostcpu.qemu_pid_file("xen:///system", "iso-a")


def test_qemu_pid_is_checked_by_its_command_line(tmp_path):
    proc = tmp_path / "proc"
    run = tmp_path / "libvirt" / "run" / "qemu"
    run.mkdir(parents=True)
    uri = f"qemu:///embed?root={tmp_path / 'libvirt'}"
    fake_process(proc, 500, QEMU_ARGV, [(503, "CPU 0/TCG", 1, 1, 0, "0")])
    fake_process(proc, 600, ["/usr/bin/sleep", "100"], [(600, "sleep", 0, 0, 0, "0")])
    assert "no QEMU pid in" in hostcpu.qemu_pid(uri, "iso-a", proc)
    (run / "iso-a.pid").write_text("500\n")
    assert hostcpu.qemu_pid(uri, "iso-a", proc) == 500
    (run / "iso-b.pid").write_text("500")  # the QEMU of another guest
    assert hostcpu.qemu_pid(uri, "iso-b", proc) == f"PID 500 in {run / 'iso-b.pid'} is not the QEMU of iso-b"
    (run / "iso-a.pid").write_text("600")  # a recycled PID
    assert "is not the QEMU of iso-a" in hostcpu.qemu_pid(uri, "iso-a", proc)


def test_this_process_a_busy_thread_shows_more_cpu_than_an_idle_one():
    """A real sample: two threads of this test process, one spinning for 0.3 s of its own CPU time, one asleep."""
    ids: dict[str, int] = {}
    go, done, sampled = threading.Event(), threading.Event(), threading.Event()

    def busy():
        ids["busy"] = threading.get_native_id()
        go.wait()
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        done.set()
        sampled.wait()  # alive until sampled: an ended thread leaves /proc/<pid>/task

    def idle():
        ids["idle"] = threading.get_native_id()
        go.wait()
        sampled.wait()

    workers = [threading.Thread(target=busy), threading.Thread(target=idle)]
    for w in workers:
        w.start()
    while len(ids) < 2:
        time.sleep(0.01)
    before = {t.tid: t for t in hostcpu.threads(os.getpid())}
    go.set()
    done.wait(30)
    after = {t.tid: t for t in hostcpu.threads(os.getpid())}
    sampled.set()
    for w in workers:
        w.join()
    ticks = hostcpu.clock_ticks()
    busy_s = hostcpu.seconds(before[ids["busy"]].times, after[ids["busy"]].times, ticks)
    idle_s = hostcpu.seconds(before[ids["idle"]].times, after[ids["idle"]].times, ticks)
    assert busy_s >= 0.2 and idle_s < 0.1 and busy_s > idle_s
    assert after[ids["busy"]].affinity == sorted(os.sched_getaffinity(0))
    assert after[ids["busy"]].times.last_cpu in os.sched_getaffinity(0)

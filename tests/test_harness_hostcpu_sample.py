"""testbed.harness.hostcpu_sample: a case's host CPU record from a canned /proc (guests' vCPU threads, vhea, peer)."""

from __future__ import annotations

import shutil

from proc_helpers import FakeClock, FakeHost

from testbed import state
from testbed.harness.hostcpu_sample import HostCpuSampler

GUESTS = {"client": "iso-a", "server": "iso-b"}
RESULT = {"messages_per_s": 100_000.0, "cpu": {"client": {"all": 50.0, "cpu0": 20.0, "cpu1": 80.0}, "server": {}}}


def sampler(host: FakeHost, *clock: float, vhea_pid: int | None = FakeHost.VHEA_PID, uri: str | None = None
            ) -> HostCpuSampler:
    return HostCpuSampler(uri or host.uri, vhea_pid, proc_root=host.proc, ticks_per_s=100,
                          clock=FakeClock(*clock))


def test_record_per_guest_per_vcpu_vhea_and_messages_per_host_cpu_second(tmp_path):
    host = FakeHost(tmp_path)
    interval = sampler(host, 10.0, 12.0).start(GUESTS)
    host.burn(1000, 1003, 25, 5)                 # iso-a vCPU 0: 0.3 s
    host.burn(1000, 1004, 140, 10, last_cpu=0)   # iso-a vCPU 1: 1.5 s, last ran on host CPU 0
    host.burn(1000, 1000, 10)                    # iso-a's main thread: 0.1 s
    host.burn(2000, 2003, 20)                    # iso-b vCPU 0: 0.2 s
    host.burn(FakeHost.VHEA_PID, FakeHost.VHEA_PID, 40, 10)
    interval.stop()
    rec = interval.record(RESULT, client_vcpus=2)
    assert rec["interval_s"] == 2.0 and rec["ticks_per_s"] == 100 and rec["client"] == "iso-a"
    a = rec["guests"]["iso-a"]
    assert a["role"] == "client" and a["qemu_pid"] == 1000 and a["accel"] == "TCG" and a["error"] is None
    assert a["vcpus"] == [
        {"vcpu": 0, "tid": 1003, "comm": "CPU 0/TCG", "seconds": 0.3, "pct": 15.0, "affinity": [0], "last_cpu": 0,
         "guest_busy_pct": 20.0},
        {"vcpu": 1, "tid": 1004, "comm": "CPU 1/TCG", "seconds": 1.5, "pct": 75.0, "affinity": [1], "last_cpu": 0,
         "guest_busy_pct": 80.0},
    ]
    assert a["vcpu_seconds"] == 1.8 and a["vcpu_pct"] == 90.0 and a["other_threads_seconds"] == 0.1
    b = rec["guests"]["iso-b"]
    assert b["role"] == "server" and b["vcpu_seconds"] == 0.2 and [v["seconds"] for v in b["vcpus"]] == [0.2, 0.0]
    assert "guest_busy_pct" not in b["vcpus"][0]  # the guest's own view is isoperf's, of the client only
    assert rec["vhea"] == {"pid": FakeHost.VHEA_PID, "seconds": 0.5, "pct": 25.0, "error": None,
                           "busiest_thread": {"tid": FakeHost.VHEA_PID, "comm": "vhea", "seconds": 0.5, "pct": 25.0}}
    assert rec["peer"] is None
    # 100k msgs/s on 0.9 host cores: 111,111 per host CPU-second; the guest saw 1 of 2 vCPUs busy: 100,000
    assert rec["client_messages_per_host_cpu_s"] == 111111.1
    assert rec["client_messages_per_guest_cpu_s"] == 100000.0


def test_a_guest_on_another_host_is_null_with_the_reason_and_vhea_still_counts(tmp_path):
    host = FakeHost(tmp_path)
    interval = sampler(host, 0.0, 1.0, uri="qemu+ssh://lab2/system").start(GUESTS)
    host.burn(FakeHost.VHEA_PID, FakeHost.VHEA_PID, 10)
    interval.stop()
    rec = interval.record(RESULT, 2)
    a = rec["guests"]["iso-a"]
    assert a["vcpus"] is None and a["vcpu_seconds"] is None and a["qemu_pid"] is None
    assert a["error"].startswith("the guest runs on another host (libvirt URI qemu+ssh://lab2/system)")
    assert rec["client_messages_per_host_cpu_s"] is None
    assert rec["client_messages_per_guest_cpu_s"] == 100000.0
    assert rec["vhea"]["seconds"] == 0.1


def test_a_pid_that_is_not_vhea_a_peer_and_a_missing_qemu(tmp_path):
    host = FakeHost(tmp_path)
    (host.libvirt / "run" / "qemu" / "iso-b.pid").unlink()
    interval = sampler(host, 0.0, 1.0, vhea_pid=1000).start(GUESTS, peer_pid=FakeHost.VHEA_PID)
    host.burn(FakeHost.VHEA_PID, FakeHost.VHEA_PID, 30)
    interval.stop()
    rec = interval.record(RESULT, 2)
    assert rec["vhea"] == {"pid": 1000, "seconds": None, "pct": None, "busiest_thread": None,
                           "error": "PID 1000 is not vhea (its command line has no 'vhea')"}
    assert rec["peer"] == {"pid": FakeHost.VHEA_PID, "seconds": 0.3, "pct": 30.0, "error": None,
                           "busiest_thread": {"tid": FakeHost.VHEA_PID, "comm": "vhea", "seconds": 0.3, "pct": 30.0}}
    assert rec["guests"]["iso-b"]["error"].startswith("no QEMU pid in ")
    assert rec["guests"]["iso-a"]["error"] is None
    assert sampler(host, 0.0).start(GUESTS).vhea.error is None  # 4242 is vhea: measured
    no_vhea = HostCpuSampler(host.uri, None, proc_root=host.proc, ticks_per_s=100, clock=FakeClock(0.0, 1.0))
    assert no_vhea.start(GUESTS).record(None, 2)["vhea"]["error"] == "no vhea PID"


def test_the_busiest_thread_of_a_peer_shows_a_single_threaded_bottleneck(tmp_path):
    host = FakeHost(tmp_path)
    peer = FakeHost.VHEA_PID
    host.threads[peer][peer + 1] = ["isoperf-worker", 0, 0, 1, "0-1"]
    host.threads[peer][peer + 2] = ["isoperf-worker", 0, 0, 0, "0-1"]
    host.write()
    interval = sampler(host, 0.0, 1.0, vhea_pid=None).start(GUESTS, peer_pid=peer)
    host.burn(peer, peer + 1, 95)   # one worker at 95 % of a core
    host.burn(peer, peer + 2, 10)
    host.burn(peer, peer, 5)
    interval.stop()
    rec = interval.record(RESULT, 2)
    assert rec["peer"]["seconds"] == 1.1 and rec["peer"]["pct"] == 110.0
    assert rec["peer"]["busiest_thread"] == {"tid": peer + 1, "comm": "isoperf-worker", "seconds": 0.95, "pct": 95.0}


def test_a_vcpu_thread_that_ends_or_a_process_that_exits_during_the_case(tmp_path):
    host = FakeHost(tmp_path)
    interval = sampler(host, 0.0, 1.0).start(GUESTS)
    shutil.rmtree(host.proc / "1000" / "task" / "1004")
    shutil.rmtree(host.proc / "2000")
    interval.stop()
    rec = interval.record(RESULT, 2)
    assert rec["guests"]["iso-a"]["error"] == "vCPU 1's thread 1004 ended during the case"
    assert rec["guests"]["iso-a"]["vcpus"] is None
    assert rec["guests"]["iso-b"]["error"].startswith("cannot list ")
    assert rec["client_messages_per_host_cpu_s"] is None


def test_single_threaded_tcg_has_one_thread_for_all_vcpus(tmp_path):
    host = FakeHost(tmp_path, vcpu_comm="ALL CPUs/TCG")
    for pid in (1000, 2000):  # one thread of that name
        shutil.rmtree(host.proc / str(pid) / "task" / str(pid + 4))
        del host.threads[pid][pid + 4]
    interval = sampler(host, 0.0, 2.0).start(GUESTS)
    host.burn(1000, 1003, 100)
    interval.stop()
    rec = interval.record({"messages_per_s": 1000.0, "cpu": {"client": {}}}, 2)
    assert [(v["vcpu"], v["seconds"]) for v in rec["guests"]["iso-a"]["vcpus"]] == [(None, 1.0)]
    assert rec["client_messages_per_host_cpu_s"] == 2000.0 and rec["client_messages_per_guest_cpu_s"] is None


def test_a_qemu_without_vcpu_thread_names(tmp_path):
    host = FakeHost(tmp_path, vcpu_comm="qemu-system-x86")
    rec = sampler(host, 0.0, 1.0).start(GUESTS).record(RESULT, 2)  # record() stops a running interval
    assert rec["guests"]["iso-a"]["error"] == "QEMU 1000 names no vCPU threads (CPU <n>/TCG or /KVM)"


def test_for_topology_takes_the_uri_and_vhea_pid(tmp_path):
    topo = state.Topology(str(tmp_path), "qemu:///embed?root=/x", "tcg", "root", "/k", {},
                          state.DeviceModelInfo("/s", 77, ["a"], "/l"))
    s = HostCpuSampler.for_topology(topo)
    assert (s.uri, s.vhea_pid, s.ticks_per_s > 0) == ("qemu:///embed?root=/x", 77, True)

"""Host CPU accounting on a real guest: its QEMU's vCPU threads are found, and a busy loop the guest runs on
vCPU 1 shows as host CPU on that vCPU's thread, not on vCPU 0's."""

from __future__ import annotations

import pytest

from testbed import hostcpu
from testbed.harness.hostcpu_sample import HostCpuSampler

pytestmark = pytest.mark.vm

BUSY_S = 6
# Spin on vCPU 1 only, for BUSY_S seconds of guest time (python3 is in the guest image; taskset may not be).
BUSY_ON_VCPU1 = (f"python3 -c 'import os, time\nos.sched_setaffinity(0, {{1}})\nend = time.time() + {BUSY_S}\n"
                 "while time.time() < end: pass'")


def test_vcpu_threads_of_each_guest_are_found_with_their_placement(testbed, topology):
    for g in topology.guests:
        pid = hostcpu.qemu_pid(topology.uri, g.name)
        assert isinstance(pid, int), pid
        threads = hostcpu.vcpu_threads(pid)
        assert sorted(threads) == list(range(g.vcpus)), [t.comm for t in hostcpu.threads(pid)]
        for t in threads.values():
            assert t.affinity, t  # libvirt pins each vCPU thread (cputune): its host cores are known
            assert t.times.last_cpu in t.affinity


def test_a_busy_loop_on_vcpu1_shows_on_vcpu1s_host_thread(testbed, topology):
    guest = topology.guests[0]
    assert guest.vcpus >= 2
    interval = HostCpuSampler.for_topology(topology).start({"client": guest.name})
    testbed.ssh(guest.name, BUSY_ON_VCPU1, timeout=120)
    interval.stop()
    rec = interval.record(None, guest.vcpus)
    g = rec["guests"][guest.name]
    assert g["error"] is None, g
    seconds = {v["vcpu"]: v["seconds"] for v in g["vcpus"]}
    assert seconds[1] > seconds[0], g["vcpus"]
    assert seconds[1] >= 1.0, g["vcpus"]  # a 6 s spin, even on a loaded 2-core host
    assert rec["vhea"]["error"] is None and rec["vhea"]["seconds"] is not None, rec["vhea"]

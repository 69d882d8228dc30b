"""`testbed up --icount` on real guests: QEMU gets the option (its command line in /proc), runs the guest's
vCPUs on one TCG thread, the guests boot and answer, and topology.json and `testbed status` say so.

Boot under icount is not much slower: on the shared 2-core TCG host of 2026-12-06 the guests were ready in
9.0 s with `--icount 2` at load average ~1 (19-23 s at ~8), and in 7.6-10.5 s without."""

from __future__ import annotations

import pytest
from vm_helpers import BIN, run

from testbed import hostcpu

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def testbed_up_args() -> list[str]:
    return ["--icount", "2", "--no-peer"]


def test_qemu_of_each_guest_got_icount_and_runs_single_threaded_tcg(testbed, topology):
    assert topology.icount["qemu_arg"] == "shift=2" and topology.icount["tcg_thread"] == "single"
    assert topology.options["icount"] == "shift=2"
    for g in topology.guests:
        pid = hostcpu.qemu_pid(topology.uri, g.name)
        assert isinstance(pid, int), pid
        argv = hostcpu.cmdline(pid)
        assert argv[argv.index("-icount") + 1] == "shift=2", argv
        comms = [t.comm for t in hostcpu.threads(pid)]
        assert "ALL CPUs/TCG" in comms and not any(c.startswith("CPU ") for c in comms), comms
        assert list(hostcpu.vcpu_threads(pid)) == [hostcpu.ALL_VCPUS]


def test_guests_answer_and_status_shows_icount(testbed, topology):
    for g in topology.guests:
        out = testbed.ssh(g.name, "nproc; cat /proc/uptime").stdout.split()
        assert int(out[0]) == g.vcpus  # both vCPUs still exist, on one host thread
        assert float(out[1]) > 0
    status = run([str(BIN / "testbed"), "status"], timeout=60, env=testbed.env).stdout
    assert "icount: -icount shift=2" in status

"""Benchmark harness: playbooks -> isoperf runs between the testbed guests -> stored, reported results.

Modules: playbook (YAML schema), topology access via testbed.state, remote (SSH/local shells),
guestcmd (the guest packages and the `python3 -m` prefix of every guest command line),
upload (the guest packages onto the guests: snapshots, hashes, transfer), dmstats (device-model counters), isoperf_cmd (command lines and
output parsing), metadata (what a result needs to be reproducible), results (run directories), report
(tables). A run: benchmark (`fab run-benchmark`: the run directory) > progress (the bar, what counts as bad)
> runner (the playbook on the topology) > case (one case's record and order) > instances (isostackd on the
client guest), measure (counters around the client), crosscheck_run (iperf3/sockperf) > detached (a process
started on a guest: PID, readiness) > errors (HarnessError).
"""

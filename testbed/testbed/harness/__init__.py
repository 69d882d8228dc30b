"""Benchmark harness: playbooks -> isoperf runs between the testbed guests -> stored, reported results.

A run, top down (the import contract harness-layers in pyproject.toml checks the order):
- benchmark: `fab run-benchmark`, the run directory and its metadata; progress: the bar, what counts as bad;
- runner: the playbook on the topology; case: one case's record and the order of what runs on its guests;
- instances (isostackd on the client guest), measure (counters around the client), crosscheck_run
  (iperf3/sockperf); detached: a process started on a guest, its PID and readiness;
- upload (the guest packages onto the guests), report (tables), metadata (what makes a result reproducible);
- command lines and parsers, no I/O: placement_cmd, crosscheck, dmstats (device-model counters), tcpstats,
  peer_role (the native peer as a side of a case), isoperf_cmd, isostackd_cmd; results (run directories);
- playbook (YAML schema), guestcmd (the guest packages and the `python3 -m` prefix of every guest command
  line), remote (SSH, local and peer shells), errors (HarnessError). The topology comes from testbed.state.
"""

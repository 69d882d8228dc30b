"""Benchmark harness: playbooks -> isoperf runs between the testbed guests -> stored, reported results.

Modules: playbook (YAML schema), topology access via testbed.state, remote (SSH/local shells and the
package transfer), guestcmd (the guest packages and the `python3 -m` prefix of every guest command line),
upload (the guest packages onto the guests), dmstats (device-model counters), isoperf_cmd (command lines and
output parsing), metadata (what a result needs to be reproducible), results (run directories), report
(tables), runner (the loop that ties them together).
"""

"""Running a cross-check between a case's guests: the tool's server on the server guest, its client against
it, the figures or why there are none.

crosscheck.py holds the tools' command lines and parsers (no I/O); this is the part that talks to the guests.
It runs after the isoperf run and the second counter snapshot, so it does not disturb either.
"""

from __future__ import annotations

from testbed import state
from testbed.harness import crosscheck, detached
from testbed.harness.detached import SERVER_READY_TIMEOUT_S, Readiness
from testbed.harness.errors import HarnessError
from testbed.harness.playbook import Case
from testbed.harness.remote import RemoteError, Shell


def run(case: Case, client_shell: Shell, server_shell: Shell, server: state.GuestInfo, commands: dict) -> dict:
    """Run iperf3 / sockperf between the case's guests (their commands go into `commands`); the record's
    `crosscheck`: the tool's figures, or why there are none."""
    name = crosscheck.tool(case)
    out: dict = {"tool": name, "error": None, "skipped": crosscheck.skip_reason(case)}
    if out["skipped"]:
        return out
    port = crosscheck.port(case)
    start = crosscheck.server_start_command(name, server.data_ip, port)
    cmd = crosscheck.client_command(case, server.data_ip)
    commands[f"{name}_server"] = start
    commands[name] = cmd
    pid = None
    try:
        pid = detached.start(server_shell, start, server.name, f"the {name} server")
        readiness = detached.wait_ready(server_shell, crosscheck.server_ready_command(port, pid),
                                        SERVER_READY_TIMEOUT_S)
        if readiness is not Readiness.READY:
            log = detached.log_tail(server_shell, crosscheck.log_path(name, port), 3)
            raise HarnessError(f"{name} server {'exited' if readiness is Readiness.EXITED else 'is not listening'}: "
                               f"{' | '.join(log) or 'no log'}")
        r = client_shell.run(cmd, timeout_s=crosscheck.client_timeout(case))
        out.update(crosscheck.parse(name, r.exit_code, r.stdout, r.stderr))
    except (RemoteError, HarnessError, crosscheck.CrosscheckError) as e:
        out["error"] = str(e)
    finally:
        if pid is not None:
            server_shell.run(crosscheck.server_stop_command(pid))
    return out

"""A process started detached on a guest (`nohup ... & echo $!`): its PID and the poll until it is ready.

The isoperf server, every isostackd instance and the cross-check tools' servers start and come up the same
way; one copy of that logic, the callers keep their own messages.
"""

from __future__ import annotations

import enum
import time

from testbed.harness import remote
from testbed.harness.errors import HarnessError
from testbed.harness.remote import Shell

POLL_INTERVAL_S = 0.2
SERVER_READY_TIMEOUT_S = 90.0  # how long a server (isoperf, a cross-check tool) may take to listen


class Readiness(enum.Enum):
    """How waiting for a detached process ended (its ready command exits 0, 3 when the process died)."""

    READY = "ready"
    EXITED = "exited"
    TIMED_OUT = "timed out"


def start(shell: Shell, command: str, guest_name: str, what: str) -> int:
    """Run a start command that prints the PID last; a HarnessError naming the guest and `what` otherwise."""
    out = remote.check(shell, command).strip()
    if not out.splitlines() or not out.splitlines()[-1].isdigit():
        raise HarnessError(f"{guest_name}: starting {what} printed {out!r}, not a PID")
    return int(out.splitlines()[-1])


def wait_ready(shell: Shell, ready_command: str, timeout_s: float) -> Readiness:
    """Poll `ready_command` (0: ready, 3: the process died, else: not yet) until ready, dead or timed out."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = shell.run(ready_command).exit_code
        if code == 0:
            return Readiness.READY
        if code == 3:
            return Readiness.EXITED
        if time.monotonic() > deadline:
            return Readiness.TIMED_OUT
        time.sleep(POLL_INTERVAL_S)


def log_tail(shell: Shell, path: str, lines: int) -> list[str]:
    """The last lines of a detached process's log on the guest (what the error messages quote)."""
    return shell.run(f"tail -n {lines} {path}").stdout.strip().splitlines()

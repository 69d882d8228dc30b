"""Running a cross-check between two scripted guests: a server that dies is the record's error, not the run's."""

from __future__ import annotations

from harness_helpers import local_topology
from test_harness_crosscheck import _cases

from testbed.harness import crosscheck_run, remote


class ToolShell:
    """A guest whose cross-check server starts as PID 77 and then dies (its ready check exits 3)."""

    def __init__(self, name: str):
        self.name = name
        self.commands: list[str] = []

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        self.commands.append(command)
        if command.endswith("& echo $!"):
            return remote.CommandResult(0, "77\n", "")
        if command.startswith("ss -Hltn"):
            return remote.CommandResult(3, "", "")
        if command.startswith("tail"):
            return remote.CommandResult(0, "bind: Address already in use\n", "")
        return remote.CommandResult(0, "", "")


def test_a_cross_check_server_that_dies_is_recorded_and_stopped():
    case = next(c for c in _cases(test="rr", size=64, conns=1) if c.stack == "legacy")
    client, server = ToolShell("iso-a"), ToolShell("iso-b")
    commands: dict = {}
    out = crosscheck_run.run(case, client, server, local_topology().guest("iso-b"), commands)
    assert out == {"tool": "sockperf", "error": "sockperf server exited: bind: Address already in use",
                   "skipped": None}
    assert set(commands) == {"sockperf_server", "sockperf"}
    assert client.commands == []  # no client against a server that is not there
    assert server.commands[-1].startswith("kill 77 ")


def test_a_case_the_tool_cannot_run_is_skipped_without_touching_the_guests():
    case = next(c for c in _cases(test="rr", size=64, conns=2) if c.stack == "legacy")
    client, server = ToolShell("iso-a"), ToolShell("iso-b")
    out = crosscheck_run.run(case, client, server, local_topology().guest("iso-b"), {})
    assert out == {"tool": "sockperf", "error": None, "skipped": "sockperf ping-pong runs one connection"}
    assert client.commands == server.commands == []

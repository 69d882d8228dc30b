"""A process started detached on a guest: its PID from the start command, and how waiting for it ends."""

from __future__ import annotations

import pytest

from testbed.harness import detached, remote
from testbed.harness.detached import Readiness
from testbed.harness.errors import HarnessError


class AnsweringShell:
    """Answers every command with the next of `answers` (exit code, stdout) and records the commands."""

    name = "g"

    def __init__(self, answers: list[tuple[int, str]]):
        self.answers = list(answers)
        self.commands: list[str] = []

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        self.commands.append(command)
        code, out = self.answers.pop(0)
        return remote.CommandResult(code, out, "")


def test_start_returns_the_pid_printed_last():
    shell = AnsweringShell([(0, "nohup: ignoring input\n4242\n")])
    assert detached.start(shell, "x & echo $!", "iso-b", "the isoperf server") == 4242


def test_start_without_a_pid_is_a_harness_error_naming_guest_and_process():
    shell = AnsweringShell([(0, "oops\n")])
    with pytest.raises(HarnessError, match=r"^iso-b: starting the iperf3 server printed 'oops', not a PID$"):
        detached.start(shell, "x & echo $!", "iso-b", "the iperf3 server")


def test_wait_ready_polls_until_ready_or_exited():
    shell = AnsweringShell([(1, ""), (1, ""), (0, "")])
    assert detached.wait_ready(shell, "ready?", timeout_s=30) is Readiness.READY
    assert shell.commands == ["ready?"] * 3
    assert detached.wait_ready(AnsweringShell([(1, ""), (3, "")]), "ready?", timeout_s=30) is Readiness.EXITED


def test_wait_ready_gives_up_after_the_timeout():
    shell = AnsweringShell([(1, ""), (1, "")])
    assert detached.wait_ready(shell, "ready?", timeout_s=0) is Readiness.TIMED_OUT
    assert len(shell.commands) == 1


def test_log_tail_is_the_lines_of_tail():
    shell = AnsweringShell([(0, "a\nb\n")])
    assert detached.log_tail(shell, "/tmp/x.log", 5) == ["a", "b"]
    assert shell.commands == ["tail -n 5 /tmp/x.log"]

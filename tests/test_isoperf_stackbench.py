"""isoperf.stackbench (`python -m isoperf.stackbench`): its send driver and its place above the runtime."""

from __future__ import annotations

import ast
import threading

import pytest
from isoperf_helpers import GUEST_SRC

import isoperf.sendloop
import isoperf.stackbench


@pytest.mark.parametrize("loop", ["python", "c"])
def test_sender_drives_the_same_send_with_either_loop(loop):
    if loop == "c" and isoperf.sendloop.load() is None:
        pytest.skip("isoperf's C send loop cannot be built here")
    stop = threading.Event()
    calls = []

    def send(msg):
        calls.append(msg)
        if len(calls) >= 100:
            stop.set()

    res: dict = {}
    isoperf.stackbench._sender(send, b"m" * 64, stop, res, loop)
    assert res["sent"] == len(calls) == 128  # both loops look at stop every 64 calls
    assert res["cpu"] >= 0


def test_help_names_the_new_module(capsys):
    with pytest.raises(SystemExit) as exc:
        isoperf.stackbench.main(["--help"])
    assert exc.value.code == 0
    assert "python -m isoperf.stackbench" in capsys.readouterr().out


def test_the_runtime_never_imports_isoperf():
    """isoperf is a tool above the runtime: isostack's modules import nothing of it, not even lazily."""
    for module in sorted((GUEST_SRC / "isostack").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            assert not any(n.split(".")[0] == "isoperf" for n in names), module.name

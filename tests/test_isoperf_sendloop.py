"""isoperf.sendloop: the C send loop (_sendloop.c) itself, and the stream client's choice of loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from isoperf_helpers import GUEST_SRC, ServerThread, free_port

import isoperf.cli
import isoperf.client
import isoperf.sendloop
from isoperf.protocol import RunParams


def _c_loop():
    fn = isoperf.sendloop.load()
    if fn is None:
        pytest.skip("isoperf's C send loop cannot be built here")
    return fn


def test_c_send_loop_calls_sendall_until_stop_and_counts_live():
    loop = _c_loop()
    calls = []
    msg = b"x" * 64
    counter = array("Q", [0])

    def sendall(m):
        assert counter[0] == len(calls)  # the count of completed calls is visible during the loop
        calls.append(m)

    n = loop(sendall, msg, lambda: len(calls) >= 200, counter)
    assert n == len(calls) == counter[0] == 256  # stop is looked at every 64 calls
    assert all(m is msg for m in calls)


def test_c_send_loop_checks_stop_before_the_first_call():
    calls = []
    assert _c_loop()(calls.append, b"m", lambda: True, bytearray(8)) == 0
    assert calls == []


def test_c_send_loop_propagates_a_failing_sendall_with_the_count_so_far():
    loop = _c_loop()
    counter = array("Q", [0])
    calls = []

    def sendall(m):
        if len(calls) == 100:
            raise BrokenPipeError(32, "Broken pipe")
        calls.append(m)

    with pytest.raises(BrokenPipeError):
        loop(sendall, b"m", lambda: False, counter)
    assert counter[0] == 100


def test_c_send_loop_propagates_a_failing_stop():
    def stop():
        raise RuntimeError("stop failed")

    with pytest.raises(RuntimeError, match="stop failed"):
        _c_loop()(len, b"m", stop, bytearray(8))


@pytest.mark.parametrize(
    "args, error",
    [
        ((len, b"m", lambda: True, bytearray(4)), ValueError),  # counter too small
        ((len, b"m", lambda: True, b"12345678"), BufferError),  # counter not writable
        ((None, b"m", lambda: True, bytearray(8)), TypeError),
        ((len, b"m", None, bytearray(8)), TypeError),
        ((len, b"m", lambda: True), TypeError),
    ],
)
def test_c_send_loop_rejects_bad_arguments(args, error):
    with pytest.raises(error):
        _c_loop()(*args)


def test_c_send_loop_lets_other_threads_run_when_sendall_keeps_the_gil():
    """list.append never releases the GIL, and a C-level stop (a list's __len__) runs no bytecode, so the
    interpreter never gets to switch threads: without the loop's own release the main thread would never run
    again to ask for the stop (the child would hang, hence the subprocess and its timeout)."""
    _c_loop()
    code = (
        "import threading, time; from array import array; from isoperf import sendloop\n"
        "loop = sendloop.load(); stop = []; sink = []; c = array('Q', [0])\n"
        "t = threading.Thread(target=loop, args=(sink.append, b'm', stop.__len__, c)); t.start()\n"
        "time.sleep(0.2); seen = c[0]; stop.append(1); t.join(5)\n"
        "assert not t.is_alive() and 0 < seen <= c[0] == len(sink), (seen, c[0], len(sink))\n"
        "print('ok', seen)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(GUEST_SRC)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


@pytest.mark.parametrize("loop", ["c", "python"])
def test_stream_send_loops_count_every_byte(loop):
    if loop == "c":
        _c_loop()
    server = ServerThread()
    params = RunParams(size=64, connections=2, duration=0.4, warmup=0.1)
    r = isoperf.client.run_client("127.0.0.1", server.port, params, send_loop=loop)
    assert server.join() == 0
    assert r["errors"] == []
    assert r["send_loop"] == loop
    assert r["server_total_bytes"] == r["client_total_bytes"] > 0
    assert r["client_total_bytes"] % 64 == 0
    assert 0 < r["client_sent_bytes"] <= r["client_total_bytes"]  # the marks saw the C loop's live count


def test_send_loop_is_python_with_verify_and_null_for_other_tests():
    server = ServerThread()
    r = isoperf.client.run_client("127.0.0.1", server.port, RunParams(size=64, duration=0.2, warmup=0, verify=True),
                           send_loop="auto")
    assert server.join() == 0 and r["errors"] == [] and r["send_loop"] is None
    server = ServerThread()
    r = isoperf.client.run_client("127.0.0.1", server.port, RunParams(test="rr", size=64, duration=0.2, warmup=0))
    assert server.join() == 0 and r["send_loop"] is None


def test_send_loop_c_where_it_cannot_load_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(isoperf.sendloop, "_LOADED", [None])
    assert isoperf.sendloop.resolve("auto") == "python"
    with pytest.raises(SystemExit) as exc:
        isoperf.cli.main(["client", "--host", "127.0.0.1", "--port", str(free_port()), "--send-loop", "c"])
    assert exc.value.code == 2
    assert "the C send loop is not available here" in capsys.readouterr().err


def test_the_send_loop_is_none_when_it_is_not_built(tmp_path):
    """Importing a copy of isoperf without its built extension compiles nothing: load() says None (python -S: the
    editable install's import hook would find the extension next to the sources)."""
    package = Path(isoperf.sendloop.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "isoperf", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    code = "from isoperf import sendloop; print(sendloop.load(), sendloop.resolve('auto'))"
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["None", "python"]
    assert not list((tmp_path / "isoperf").glob("_sendloop*.so"))

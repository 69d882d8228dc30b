"""isoperf command lines for the guests and the parse of what the client prints.

Apart from any I/O (as Flent separates a runner's `parse(output)` from the process), so both are tested on
canned text.
"""

from __future__ import annotations

import json
import shlex

from testbed.harness.guestcmd import ISOPERF, GuestLayout
from testbed.harness.isostackd_cmd import SOCKET
from testbed.harness.playbook import Case

# Keys the harness reads from `isoperf client --json`; a missing one means an incompatible isoperf.
REQUIRED_KEYS = (
    "test",
    "size",
    "connections",
    "duration",
    "bytes",
    "messages",
    "throughput_bps",
    "messages_per_s",
    "cpu",
    "verified",
    "errors",
)


def server_log(layout: GuestLayout, port: int) -> str:
    return f"{layout.log_dir}/isoperf-server-{port}.log"


def server_start_command(layout: GuestLayout, bind: str, port: int, data_bind: str | None = None,
                         stack: str = "legacy", frontend: str = "python") -> str:
    """Start a one-session server detached from the SSH session; prints its PID. `bind` is the control port's
    address, `data_bind` the data listener's (default `bind`); `stack` iso serves through the guest's isostackd,
    by the Python front-end (`--stack iso`) or, `frontend` preload, `--stack legacy` under isostack-run.

    The log is removed first so a "listening" line from an earlier server cannot be mistaken for this one.
    """
    log = shlex.quote(server_log(layout, port))
    data = f" --data-bind {shlex.quote(data_bind)}" if data_bind and data_bind != bind else ""
    iso = stack == "iso" and frontend != "preload"  # the shim serves `--stack legacy`'s kernel-socket calls
    prefix = layout.isoperf(ISOSTACK_SOCKET=SOCKET) if iso else layout.isoperf()
    if stack == "iso" and frontend == "preload":
        prefix = f"{layout.isostack_run(SOCKET)} {layout.python} -m {ISOPERF}"
    return (
        f"rm -f {log}; nohup env {prefix} server --bind {shlex.quote(bind)} --port {port}{data}"
        f"{' --stack iso' if iso else ''} --once > {log} 2>&1 < /dev/null & echo $!"
    )


def server_ready_command(layout: GuestLayout, port: int, pid: int) -> str:
    """Exit 0 once the server listens, 3 if it died (its log then says why), 1 if not yet."""
    log = shlex.quote(server_log(layout, port))
    return f"grep -q 'listening' {log} && exit 0; kill -0 {pid} 2>/dev/null || exit 3; exit 1"


def server_stop_command(pid: int, grace_s: int = 5) -> str:
    """Let a --once server finish its session (and log it) for up to grace_s, then kill it."""
    return (
        f"for i in $(seq {grace_s * 10}); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done;"
        f" kill {pid} 2>/dev/null; true"
    )


def client_command(layout: GuestLayout, case: Case, server_ip: str, control: tuple[str, int] | None = None) -> str:
    """The client's command line; `control` (host, port): the control connection's own path (control_path).
    Stack iso with the preload front-end: `--stack legacy` under isostack-run (the shim takes its TCP sockets)."""
    preload = case.stack == "iso" and case.frontend == "preload"
    args = [
        "client",
        "--host",
        server_ip,
        "--port",
        str(case.spec.port),
        "--test",
        case.spec.test,
        "--stack",
        "legacy" if preload else case.stack,
        "--size",
        str(case.size),
        "--connections",
        str(case.connections),
        "--duration",
        _num(case.spec.duration),
        "--warmup",
        _num(case.spec.warmup),
        "--json",
    ]
    if control is not None and control != (server_ip, case.spec.port):
        args += ["--control-host", control[0], "--control-port", str(control[1])]
    if case.spec.verify:
        args.append("--verify")
    if case.spec.response_size is not None:
        args += ["--response-size", str(case.spec.response_size)]
    if case.spec.intervals != 1:
        args += ["--intervals", str(case.spec.intervals)]
    if case.spec.cpu is not None:
        args += ["--cpu", str(case.spec.cpu)]
    if case.spec.sndbuf is not None:
        args += ["--sndbuf", str(case.spec.sndbuf)]
    argv = " ".join(shlex.quote(a) for a in args)
    if preload:
        return f"{layout.isostack_run(SOCKET)} {layout.python} -m {ISOPERF} {argv}"
    if case.stack == "iso":
        # The front-end finds isostackd by its socket; where the client runs is pinning.pinned's (case.py).
        return f"{layout.isoperf(ISOSTACK_SOCKET=SOCKET)} {argv}"
    return f"{layout.isoperf()} {argv}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def client_timeout(case: Case) -> float:
    """Generous: connection set-up and the result exchange add to warm-up + duration under TCG."""
    return case.spec.warmup + case.spec.duration * case.spec.intervals + 90.0


class IsoperfOutputError(RuntimeError):
    pass


def parse_client_output(exit_code: int, stdout: str, stderr: str) -> dict:
    """The client's JSON result, or IsoperfOutputError with its error message when there is none.

    A run with verification errors still returns its JSON (exit 1): the caller records the errors.
    """
    text = stdout.strip()
    if text:
        try:
            result = json.loads(text)
        except json.JSONDecodeError:
            result = None
        if isinstance(result, dict):
            missing = [k for k in REQUIRED_KEYS if k not in result]
            if missing:
                raise IsoperfOutputError(f"isoperf JSON lacks {', '.join(missing)} (version mismatch?)")
            return result
    lines = [ln for ln in (stderr.strip() or text).splitlines() if ln.strip()]
    tail = " | ".join(lines[-3:]) or "no output"
    raise IsoperfOutputError(f"isoperf client exited {exit_code}: {tail}")

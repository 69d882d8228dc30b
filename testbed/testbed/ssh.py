"""SSH into testbed guests (paramiko): waiting for a guest to come up, running commands."""

from __future__ import annotations

import time
from pathlib import Path

import paramiko


class GuestUnreachable(RuntimeError):
    pass


def connect(host: str, port: int, user: str, key: Path, timeout_s: float = 10.0) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    # The guests are ours and their host keys change with every image build.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(host, port=port, username=user, key_filename=str(key), timeout=timeout_s,
                   banner_timeout=timeout_s, auth_timeout=timeout_s, allow_agent=False, look_for_keys=False)
    return client


def run(client: paramiko.SSHClient, command: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout_s)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err


def wait_for_ssh(host: str, port: int, user: str, key: Path, timeout_s: float) -> float:
    """Retry until `true` runs in the guest; returns the seconds it took."""
    t0 = time.monotonic()
    last = "no attempt"
    while time.monotonic() - t0 < timeout_s:
        try:
            client = connect(host, port, user, key, timeout_s=5.0)
            try:
                code, _, _ = run(client, "true", timeout_s=10.0)
                if code == 0:
                    return time.monotonic() - t0
                last = f"`true` exited {code}"
            finally:
                client.close()
        except (TimeoutError, OSError, paramiko.SSHException, EOFError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(1.0)
    raise GuestUnreachable(f"no SSH to {user}@{host}:{port} within {timeout_s:.0f} s ({last})")

"""The guest code and how a guest runs it: the one place that names the folders the harness uploads and
builds the `python3 -m ...` prefix of every command line that runs them (isostackd, isoperf, placement).

The host never imports the guest code to find it: the packages are folders of this repository, uploaded as
files next to each other under the guests' PYTHONPATH and run there by Debian's python3.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

GUEST_ROOT = Path(__file__).resolve().parents[3] / "isostack-guest"  # the repository's guest code
GUEST_PACKAGES = ("isostack", "isoperf")  # the runtime and the tools above it, uploaded side by side

ISOPERF = "isoperf"
ISOSTACKD = "isostack.dispatcher"
ISOSTACK_RUN = "isostack.run"  # the preload launcher: libisostack-preload.so travels in the isostack folder
PLACEMENT = "isostack.placement"


def package_dirs(root: Path = GUEST_ROOT) -> list[Path]:
    """The folders to upload, in GUEST_PACKAGES order."""
    return [root / name for name in GUEST_PACKAGES]


@dataclass(frozen=True)
class GuestLayout:
    """Where the packages live in a guest and which interpreter runs them."""

    remote_root: str = "/opt"
    python: str = "python3"
    log_dir: str = "/tmp"

    def module_command(self, module: str, **env: str) -> str:
        """`[VAR=value ...] PYTHONPATH=<remote root> <python> -m <module>` (arguments follow; after `env` or
        `nohup env` when it starts detached)."""
        assignments = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
        assignments.append(f"PYTHONPATH={shlex.quote(self.remote_root)}")
        return f"{' '.join(assignments)} {self.python} -m {module}"

    def isoperf(self, **env: str) -> str:
        return self.module_command(ISOPERF, **env)

    def isostack_run(self, socket: str) -> str:
        """`isostack-run --socket SOCKET` as the guests run it (PROGRAM ARGS follow): the launcher and the shim
        are in the uploaded isostack folder, built on the host (the guests have no compiler), and the program
        inherits PYTHONPATH, so `python3 -m isoperf` under it finds isoperf."""
        return f"{self.module_command(ISOSTACK_RUN)} --socket {shlex.quote(socket)}"

    def isostackd(self) -> str:
        return self.module_command(ISOSTACKD)

    def placement(self) -> str:
        return self.module_command(PLACEMENT)


def peer_layout(log_dir: Path, root: Path = GUEST_ROOT) -> GuestLayout:
    """The native peer runs the packages where they are, with this venv's Python (nothing is uploaded)."""
    return GuestLayout(remote_root=str(root), python=sys.executable, log_dir=str(log_dir))

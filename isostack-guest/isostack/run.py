"""isostack-run: run an unmodified program over IsoStack by preloading libisostack-preload.so.

    isostack-run [--socket PATH] PROGRAM [ARGS...]

It finds the running isostackd by its attach socket (a listening Unix socket in /proc/net/unix: looking
attaches nothing, so isostackd's counters see only the program), says clearly when there is none, and
replaces itself with PROGRAM with LD_PRELOAD and ISOSTACK_SOCKET set. The program's TCP sockets (IPv4 and IPv6)
then go through isostackd; everything else goes to the kernel (docs/preload.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .attach import DEFAULT_SOCKET, discover

LIBRARY = Path(__file__).resolve().parent / "libisostack-preload.so"
EX_UNAVAILABLE = 69  # sysexits: isostackd not running, or the shim not built
EX_NOTFOUND = 127  # the shell's "command not found"
UNIX_LISTENING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags column


def listening_unix_paths(proc_net_unix: str = "/proc/net/unix") -> set[str]:
    """Paths of the listening Unix sockets of this network namespace (no connection is made)."""
    paths = set()
    try:
        with open(proc_net_unix) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and int(fields[3], 16) & UNIX_LISTENING:
                    paths.add(fields[7])
    except OSError:
        pass
    return paths


def _bound_as(listening: str, path: str) -> bool:
    """Whether a listener bound at `listening` now answers at `path`: the same path, or isostackd's temporary
    name "<path>.<pid>.tmp", which it binds and renames into place (/proc/net/unix keeps the bound name)."""
    if listening == path:
        return True
    middle = listening[len(path) + 1:-len(".tmp")] if listening.startswith(path + ".") else ""
    return listening.endswith(".tmp") and middle.isdigit()


def find_isostackd(path: str, proc_net_unix: str = "/proc/net/unix") -> str | None:
    """Why isostackd cannot be used at `path`, or None when one listens there."""
    if not os.path.exists(path):
        return f"isostackd is not running: no attach socket at {path} (start it: isostackd --socket {path} ...)"
    listening = listening_unix_paths(proc_net_unix)
    real = os.path.realpath(path)
    if not any(_bound_as(p, path) or _bound_as(os.path.realpath(p), real) for p in listening):
        return f"isostackd is not running: {path} exists but nothing listens on it (left by a stopped isostackd?)"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isostack-run",
        description="Run PROGRAM with its TCP sockets served by isostackd (LD_PRELOAD of libisostack-preload.so). "
                    "TCP over IPv4 and IPv6 goes through IsoStack; UDP, Unix sockets and every other fd go to the "
                    "kernel untouched. Dynamically linked programs only. See docs/preload.md.",
        epilog="Exit status: PROGRAM's own; 2 for a usage error, 69 when isostackd is not running or the shim is not "
               "built, 127 when PROGRAM is not found. Environment: ISOSTACK_SOCKET (the attach socket), "
               "ISOSTACK_SPIN_US (spin before sleeping, default 50), ISOSTACK_MAX_SOCKETS (default 64), "
               "ISOSTACK_TX_SIZE / ISOSTACK_RX_SIZE (ring bytes per socket, default 262144).")
    p.add_argument("--socket", default=None,
                   help=f"isostackd's attach socket (default: $ISOSTACK_SOCKET, else {DEFAULT_SOCKET})")
    p.add_argument("program", help="the program to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def environment(env: dict, path: str, library: Path) -> dict:
    """The program's environment: the shim first in LD_PRELOAD, the attach socket named."""
    out = dict(env)
    preload = [p for p in out.get("LD_PRELOAD", "").replace(",", " ").split() if p and p != str(library)]
    out["LD_PRELOAD"] = " ".join([str(library), *preload])
    out["ISOSTACK_SOCKET"] = path
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.socket or os.environ.get("ISOSTACK_SOCKET") or DEFAULT_SOCKET
    if not LIBRARY.exists():
        print(f"isostack-run: {LIBRARY} is not built; build it with `make native` (or `pip install -e .`) on a host "
              "with a C compiler", file=sys.stderr)
        return EX_UNAVAILABLE
    why = find_isostackd(path)
    if why:
        print(f"isostack-run: {why}", file=sys.stderr)
        return EX_UNAVAILABLE
    if len(discover(path)) > 1:
        print(f"isostack-run: several isostackd instances run; the shim attaches to {path} only", file=sys.stderr)
    program = shutil.which(args.program) if os.sep not in args.program else args.program
    if program is None or not os.access(program, os.X_OK):
        print(f"isostack-run: {args.program}: command not found", file=sys.stderr)
        return EX_NOTFOUND
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, [args.program, *args.args], environment(dict(os.environ), path, LIBRARY))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

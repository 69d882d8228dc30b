"""Importing any module of the project runs no program: no compiler, no QEMU, no child process at all.

Each package is imported module by module in a fresh interpreter whose subprocess, os.system, os.fork and
os.exec* are replaced by functions that fail loudly, so a module that compiles its C part (or starts anything)
at import fails here with the module's name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> its folder in the repository
PACKAGES = {
    "vhea": ROOT / "device-model" / "vhea",
    "isostack": ROOT / "isostack-guest" / "isostack",
    "isoperf": ROOT / "isostack-guest" / "isoperf",
    "testbed": ROOT / "testbed" / "testbed",
}

PROBE = r"""
import importlib, json, os, pkgutil, subprocess, sys

calls = []

def refuse(name):
    def call(*args, **kwargs):
        calls.append((name, repr(args[1:] if name == "subprocess.Popen" else args)[:200]))
        raise RuntimeError(f"{name} called during import")
    return call

subprocess.Popen.__init__ = refuse("subprocess.Popen")
subprocess.Popen.__del__ = lambda self: None  # the refused object was never set up
os.system = refuse("os.system")
os.fork = refuse("os.fork")
os.posix_spawn = refuse("os.posix_spawn")
for name in ("execv", "execve", "execvp", "execvpe", "execl", "execlp"):
    setattr(os, name, refuse("os." + name))

package = importlib.import_module(sys.argv[1])
results = {}
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if info.name.endswith("__main__"):
        continue  # running it is what __main__ is for
    before = len(calls)
    try:
        importlib.import_module(info.name)
        error = None
    except Exception as exc:  # noqa: BLE001 - reported to the test
        error = f"{type(exc).__name__}: {exc}"
    results[info.name] = {"error": error, "calls": calls[before:]}
print(json.dumps(results))
"""


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_importing_a_module_starts_no_process(package, tmp_path):
    # A copy of the sources without any built extension: the state of a checkout before the install step, in
    # which a module that compiles at import would reach for gcc.
    for name, folder in PACKAGES.items():
        if folder.is_dir():
            shutil.copytree(folder, tmp_path / name,
                            ignore=shutil.ignore_patterns("*.so", "__pycache__", "build"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, package], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results, f"no modules found under {package}"
    bad = {name: r for name, r in results.items() if r["error"] or r["calls"]}
    assert not bad, f"modules that failed to import or started a process at import: {bad}"

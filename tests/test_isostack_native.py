"""isostack.native: importing it loads the C parts that installing the project built, and compiles nothing.

Each case imports a copy of the package in a subprocess, with some built parts left out (`python -S`: the editable
install's import hook would find the parts next to the sources).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import isostack

PACKAGE = Path(isostack.__file__).resolve().parent
REPORT = "from isostack import native; print(native.FAST is not None, native.LIB is not None)"


def _import_a_copy(tmp_path, leave_out: tuple[str, ...], code: str = REPORT) -> subprocess.CompletedProcess:
    shutil.copytree(PACKAGE, tmp_path / "isostack", ignore=shutil.ignore_patterns("__pycache__", *leave_out))
    env = {k: v for k, v in os.environ.items() if k != "ISOSTACK_NO_FASTPATH"}
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(env, PYTHONPATH=str(tmp_path)))


def _built(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.so"))


@pytest.fixture(autouse=True)
def _needs_the_built_parts():
    if not list(PACKAGE.glob("_fastpath*.so")) or not (PACKAGE / "_atomics.so").exists():
        pytest.skip("isostack's native parts are not built here (`make native`)")


def test_import_loads_the_extension_and_compiles_nothing(tmp_path):
    p = _import_a_copy(tmp_path, ())
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "False"]
    assert _built(tmp_path / "isostack") == _built(PACKAGE)


def test_without_the_extension_the_atomics_library_is_loaded(tmp_path):
    p = _import_a_copy(tmp_path, ("_fastpath*.so",))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "True"]
    assert not list((tmp_path / "isostack").glob("_fastpath*.so"))  # not compiled at import


def test_without_any_built_part_the_import_fails_naming_the_build_command(tmp_path):
    p = _import_a_copy(tmp_path, ("*.so",))
    assert p.returncode != 0
    assert "NativeError: isostack's native parts are not built" in p.stderr
    assert "`make native`" in p.stderr.splitlines()[-1]
    assert not list((tmp_path / "isostack").glob("*.so"))


def test_python_m_isostack_native_reports_what_loads(tmp_path):
    p = _import_a_copy(tmp_path, (), "import runpy; runpy.run_module('isostack.native', run_name='__main__')")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("_fastpath: ") and lines[0].endswith(".so")
    assert lines[1] == f"_atomics: {tmp_path / 'isostack' / '_atomics.so'}"
    assert lines[2].startswith("_dispatch: ") and lines[2].endswith(".so")  # isostackd's hot path
    assert len(lines) == 3

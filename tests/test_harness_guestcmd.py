"""guestcmd: the guest packages the harness uploads and the `python3 -m` prefix of every guest command line."""

from __future__ import annotations

import subprocess
import sys

from testbed.harness import guestcmd
from testbed.harness.guestcmd import GuestLayout


def test_the_guest_root_holds_both_packages_side_by_side():
    dirs = guestcmd.package_dirs()
    assert [d.name for d in dirs] == ["isostack", "isoperf"]
    assert all((d / "__init__.py").is_file() for d in dirs)
    assert (guestcmd.GUEST_ROOT / "isoperf" / "__main__.py").is_file()  # `python3 -m isoperf`


def test_module_commands_share_one_prefix():
    layout = GuestLayout(remote_root="/opt dir", python="python3.11")
    assert layout.isoperf() == "PYTHONPATH='/opt dir' python3.11 -m isoperf"
    assert layout.isostackd() == "PYTHONPATH='/opt dir' python3.11 -m isostack.dispatcher"
    assert layout.placement() == "PYTHONPATH='/opt dir' python3.11 -m isostack.placement"
    assert GuestLayout().isoperf(ISOSTACK_SOCKET="/run/a b.sock") == (
        "ISOSTACK_SOCKET='/run/a b.sock' PYTHONPATH=/opt python3 -m isoperf"
    )


def test_the_harness_does_not_import_the_guest_packages():
    """The host finds the guest code as folders; importing it would run the runtime's module code here."""
    code = (
        "import sys; import testbed.harness.benchmark, testbed.harness.guestcmd;"
        " bad = sorted(m for m in sys.modules if m.split('.')[0] in ('isostack', 'isoperf'));"
        " sys.exit(f'imported {bad}' if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr

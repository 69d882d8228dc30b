"""Shells and the package transfer: unchanged trees are not uploaded again, snapshots are what is hashed, an
unreachable guest is named."""

from __future__ import annotations

import io
import sys
import tarfile

import pytest
from harness_helpers import free_port

from testbed.harness import remote


def test_sync_package_skips_an_unchanged_tree(tmp_path):
    pkg = tmp_path / "src" / "isostack"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "isoperf.py").write_text("print('v1')\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    root = tmp_path / "opt"
    root.mkdir()
    shell = remote.LocalShell("g")
    assert remote.sync_package(shell, remote.PackageSnapshot.read(pkg), str(root), sys.executable) is True
    assert sorted(p.name for p in (root / "isostack").iterdir()) == [".upload-sha256", "__init__.py", "isoperf.py"]
    assert remote.sync_package(shell, remote.PackageSnapshot.read(pkg), str(root), sys.executable) is False
    (pkg / "isoperf.py").write_text("print('v2')\n")
    assert remote.sync_package(shell, remote.PackageSnapshot.read(pkg), str(root), sys.executable) is True
    assert (root / "isostack" / "isoperf.py").read_text() == "print('v2')\n"
    assert not (root / "isostack.upload").exists()


def test_snapshot_tarball_holds_exactly_the_hashed_files(tmp_path):

    pkg = tmp_path / "isostack"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A")
    (pkg / "sub" / "b.so").write_bytes(b"\x7fELF")
    (pkg / "sub" / "b.so").chmod(0o755)
    snap = remote.PackageSnapshot.read(pkg)
    (pkg / "a.py").write_text("changed after the snapshot")
    with tarfile.open(fileobj=io.BytesIO(snap.tarball())) as tar:
        members = {m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers()}
    assert members == {"isostack/a.py": (b"A", 0o644), "isostack/sub/b.so": (b"\x7fELF", 0o755)}
    assert snap.sha256 != remote.package_hash(pkg)


def test_package_hash_depends_on_names_and_content(tmp_path):
    pkg = tmp_path / "isostack"
    pkg.mkdir()
    (pkg / "a.py").write_text("1")
    h1 = remote.package_hash(pkg)
    (pkg / "a.py").rename(pkg / "b.py")
    h2 = remote.package_hash(pkg)
    (pkg / "b.py").write_text("2")
    assert len({h1, h2, remote.package_hash(pkg)}) == 3


def test_fabric_shell_unreachable_guest_is_a_remote_error_naming_it(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a key\n")
    shell = remote.FabricShell("iso-a", "127.0.0.1", free_port(), "root", str(key), connect_timeout_s=3)
    try:
        with pytest.raises(remote.RemoteError, match=r"^iso-a: 'true' failed: "):
            shell.run("true")
    finally:
        shell.close()

"""Putting the guest packages on the guests: an unchanged tree is not uploaded again, a snapshot's tarball
holds exactly what it hashed, the hash follows names and content."""

from __future__ import annotations

import sys

from testbed.harness import remote, upload


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
    assert upload.sync_package(shell, upload.PackageSnapshot.read(pkg), str(root), sys.executable) is True
    assert sorted(p.name for p in (root / "isostack").iterdir()) == [".upload-sha256", "__init__.py", "isoperf.py"]
    assert upload.sync_package(shell, upload.PackageSnapshot.read(pkg), str(root), sys.executable) is False
    (pkg / "isoperf.py").write_text("print('v2')\n")
    assert upload.sync_package(shell, upload.PackageSnapshot.read(pkg), str(root), sys.executable) is True
    assert (root / "isostack" / "isoperf.py").read_text() == "print('v2')\n"
    assert not (root / "isostack.upload").exists()


def test_snapshot_tarball_holds_exactly_the_hashed_files(tmp_path):
    import io
    import tarfile

    pkg = tmp_path / "isostack"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A")
    (pkg / "sub" / "b.so").write_bytes(b"\x7fELF")
    (pkg / "sub" / "b.so").chmod(0o755)
    snap = upload.PackageSnapshot.read(pkg)
    (pkg / "a.py").write_text("changed after the snapshot")
    with tarfile.open(fileobj=io.BytesIO(snap.tarball())) as tar:
        members = {m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers()}
    assert members == {"isostack/a.py": (b"A", 0o644), "isostack/sub/b.so": (b"\x7fELF", 0o755)}
    assert snap.sha256 != upload.package_hash(pkg)


def test_package_hash_depends_on_names_and_content(tmp_path):
    pkg = tmp_path / "isostack"
    pkg.mkdir()
    (pkg / "a.py").write_text("1")
    h1 = upload.package_hash(pkg)
    (pkg / "a.py").rename(pkg / "b.py")
    h2 = upload.package_hash(pkg)
    (pkg / "b.py").write_text("2")
    assert len({h1, h2, upload.package_hash(pkg)}) == 3

"""testbed.virt: libvirt connections, the embedded driver without a daemon, clear errors."""

from __future__ import annotations

import pytest

from testbed import virt


@pytest.mark.parametrize("uri, message", [
    ("qemu+unix:///system?socket=/nonexistent/libvirt.sock", "cannot open libvirt URI"),
    ("qemu:///embed", "needs \\?root=DIR"),
])
def test_unreachable_libvirt_uri_is_a_clear_error(uri, message):
    with pytest.raises(virt.VirtError, match=message):
        virt.connect(uri)


def test_embedded_driver_opens_without_a_daemon(tmp_path):
    root = tmp_path / "embed"
    conn = virt.connect(virt.embed_uri(root))
    try:
        assert conn.getType() == "QEMU"
        assert virt.find_domain(conn, "no-such-guest") is None
        assert "cgroup_controllers = [ ]" in (root / "etc" / "qemu.conf").read_text()
    finally:
        conn.close()

"""Shells: an unreachable guest is a RemoteError naming it."""

from __future__ import annotations

import pytest
from harness_helpers import free_port

from testbed.harness import remote


def test_fabric_shell_unreachable_guest_is_a_remote_error_naming_it(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a key\n")
    shell = remote.FabricShell("iso-a", "127.0.0.1", free_port(), "root", str(key), connect_timeout_s=3)
    try:
        with pytest.raises(remote.RemoteError, match=r"^iso-a: 'true' failed: "):
            shell.run("true")
    finally:
        shell.close()

"""SSH keys of an image: the guest's host keys, and the image's own key that logs in as root.

Each image gets a fresh key pair (kept beside it in the cache), so no key is shared between images or
checked into the repository.
"""

from __future__ import annotations

from pathlib import Path

from testbed.image.tools import run_tool


def install_ssh_keys(rootfs: Path, out: Path) -> None:
    """Host keys in the rootfs; ``out``/id_ed25519 (+ .pub) made and authorised for root in the guest."""
    # Host keys: openssh-server's postinst made them; -A fills in any that are missing.
    run_tool(["chroot", str(rootfs), "ssh-keygen", "-A"], what="ssh-keygen -A in the rootfs")
    key = out / "id_ed25519"
    run_tool(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "isostack-testbed", "-f", str(key)],
        what="ssh-keygen (image key)",
    )
    ssh_dir = rootfs / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    ssh_dir.chmod(0o700)
    auth = ssh_dir / "authorized_keys"
    auth.write_text((out / "id_ed25519.pub").read_text())
    auth.chmod(0o600)

"""testbed.accel: the choice between KVM and TCG, and the cached KVM probe."""

from __future__ import annotations

import json

import pytest

from testbed import accel


def test_accel_tcg_requested_needs_no_probe(tmp_path):
    assert accel.choose_accel("tcg", tmp_path / "vmlinux", tmp_path) == ("tcg", "TCG requested")
    with pytest.raises(ValueError, match="accel must be auto, kvm or tcg"):
        accel.choose_accel("hvf", tmp_path / "vmlinux", tmp_path)


def test_accel_uses_cached_probe_verdict(tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    key = accel.probe_key(kernel)
    (tmp_path / "kvm-probe.json").write_text(json.dumps({key: {"ok": False, "reason": "hangs"}}))
    assert accel.choose_accel("auto", kernel, tmp_path) == ("tcg", "hangs (cached probe)")
    with pytest.raises(RuntimeError, match="KVM requested but it does not work here: hangs"):
        accel.choose_accel("kvm", kernel, tmp_path)

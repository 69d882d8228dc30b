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


CPUINFO_NO_FLAG = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep hypervisor lahf_lm
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep hypervisor lahf_lm
"""
CPUINFO_VMX = CPUINFO_NO_FLAG.replace(" hypervisor", " vmx hypervisor")


def test_accel_reads_the_virtualization_flags_of_cpuinfo():
    assert accel.virtualization_flags(CPUINFO_NO_FLAG) == set()
    assert accel.virtualization_flags(CPUINFO_VMX) == {"vmx"}
    assert accel.virtualization_flags("flags\t: sse svm\n") == {"svm"}
    # "vmx" elsewhere than on a flags line (a vmx flags line of its own, a model name) is not the CPU flag
    assert accel.virtualization_flags("vmx flags\t: ept vpid\nmodel name\t: svm box\n") == set()


def test_accel_without_a_virtualization_flag_chooses_tcg_at_once(tmp_path, monkeypatch):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_NO_FLAG)
    dev_kvm = tmp_path / "kvm"
    dev_kvm.write_text("")

    def no_boot(*args, **kwargs):
        raise AssertionError("the boot probe must not run without a virtualization flag")

    monkeypatch.setattr(accel, "kvm_boots", no_boot)
    acc, reason = accel.choose_accel("auto", kernel, tmp_path, cpuinfo=cpuinfo, dev_kvm=dev_kvm)
    assert acc == "tcg" and reason == f"the CPU has no virtualization flag (vmx/svm in {cpuinfo})"
    assert not (tmp_path / "kvm-probe.json").exists()  # nothing to cache: the check is free
    with pytest.raises(RuntimeError, match="KVM requested but it does not work here: the CPU has no virt"):
        accel.choose_accel("kvm", kernel, tmp_path, cpuinfo=cpuinfo, dev_kvm=dev_kvm)
    # with the flag but no usable /dev/kvm: TCG at once as well
    cpuinfo.write_text(CPUINFO_VMX)
    acc, reason = accel.choose_accel("auto", kernel, tmp_path, cpuinfo=cpuinfo, dev_kvm=tmp_path / "no-kvm")
    assert acc == "tcg" and reason == f"{tmp_path / 'no-kvm'} is missing or not accessible"


def test_accel_with_the_flag_still_boots_the_probe_and_caches_it(tmp_path, monkeypatch):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_VMX)
    dev_kvm = tmp_path / "kvm"
    dev_kvm.write_text("")
    calls = []

    def boots(k, timeout_s=accel.PROBE_TIMEOUT_S):
        calls.append(k)
        return False, "QEMU exited (1): nested KVM aborts"

    monkeypatch.setattr(accel, "kvm_boots", boots)
    assert accel.choose_accel("auto", kernel, tmp_path, cpuinfo=cpuinfo, dev_kvm=dev_kvm) == (
        "tcg", "QEMU exited (1): nested KVM aborts")
    assert accel.choose_accel("auto", kernel, tmp_path, cpuinfo=cpuinfo, dev_kvm=dev_kvm) == (
        "tcg", "QEMU exited (1): nested KVM aborts (cached probe)")
    assert calls == [kernel]
    monkeypatch.setattr(accel, "kvm_boots", lambda k, timeout_s=0: (True, "guest kernel booted under KVM"))
    (tmp_path / "kvm-probe.json").unlink()
    assert accel.choose_accel("auto", kernel, tmp_path, cpuinfo=cpuinfo, dev_kvm=dev_kvm)[0] == "kvm"


def test_accel_cpuinfo_unreadable_means_no_kvm(tmp_path):
    ok, reason = accel.kvm_possible(tmp_path / "missing", tmp_path / "kvm")
    assert not ok and reason.startswith(f"cannot read {tmp_path / 'missing'}")

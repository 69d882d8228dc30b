"""testbed.lifecycle.options: the checks of `testbed up`'s options, guest names, dedicated vCPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.lifecycle.options import UpOptions, guest_names


def test_up_options_validation():
    with pytest.raises(ValueError, match="--guests must be 2..8"):
        UpOptions(state_dir=Path("/tmp"), guests=1).validate()
    with pytest.raises(ValueError, match="--queues must be 1..16"):
        UpOptions(state_dir=Path("/tmp"), queues=0).validate()
    assert guest_names(3) == [("iso-a", "a"), ("iso-b", "b"), ("iso-c", "c")]


def test_isolate_cpus_become_kernel_parameters_for_the_dedicated_vcpus():
    opts = UpOptions(state_dir=Path("/tmp"), vcpus=4, isolate_cpus="1,3")
    opts.validate()
    assert opts.guest_kernel_args() == ["isolcpus=1,3", "nohz_full=1,3", "rcu_nocbs=1,3", "irqaffinity=0,2"]
    assert UpOptions(state_dir=Path("/tmp"), vcpus=4, isolate_cpus="1-3").isolated() == [1, 2, 3]
    assert UpOptions(state_dir=Path("/tmp")).guest_kernel_args() == []
    # A testbed with other isolated CPUs is not reused.
    assert opts.fingerprint() != UpOptions(state_dir=Path("/tmp"), vcpus=4).fingerprint()


@pytest.mark.parametrize("cpus, message", [
    ("2", "vCPU 2 does not exist"),
    ("0", "vCPU 0 must stay"),
    ("0-1", "vCPU 0 must stay"),
    ("one", "not a CPU list"),
    ("1,", "not a CPU list"),
    ("1-0", "runs backwards"),
])
def test_isolate_cpus_rejects_bad_lists(cpus, message):
    with pytest.raises(ValueError, match=message):
        UpOptions(state_dir=Path("/tmp"), vcpus=2, isolate_cpus=cpus).validate()


def test_icount_is_refused_with_kvm_and_changes_the_fingerprint_only_when_on():
    with pytest.raises(ValueError, match="--icount needs TCG"):
        UpOptions(state_dir=Path("/tmp"), accel="kvm", icount="3").validate()
    with pytest.raises(ValueError, match="0..10 or auto"):
        UpOptions(state_dir=Path("/tmp"), icount="12").validate()
    on = UpOptions(state_dir=Path("/tmp"), icount="3,sleep=off")
    on.validate()
    assert on.icount_spec().qemu_arg() == "shift=3,sleep=off"
    assert on.fingerprint()["icount"] == "shift=3,sleep=off"
    # Off leaves the fingerprint as it was before --icount existed, so a running testbed is still reused.
    assert "icount" not in UpOptions(state_dir=Path("/tmp")).fingerprint()
    assert UpOptions(state_dir=Path("/tmp")).icount_spec() is None

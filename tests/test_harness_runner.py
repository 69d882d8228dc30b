"""The runner on a topology: which guests a case runs on, whether a playbook fits the testbed, the guest
packages' built native parts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness_helpers import (
    ISO_PB,
    instances_runner,
    local_runner,
    local_topology,
    stream_playbook,
)
from rich.console import Console

from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GUEST_ROOT, GuestLayout
from testbed.harness.playbook import parse_playbook
from testbed.harness.runner import Runner


def test_unknown_guest_in_playbook_is_a_harness_error(tmp_path):
    runner = local_runner(tmp_path, None)
    playbook = parse_playbook(stream_playbook(5701, "    client: iso-z\n"), "local.yaml")
    with pytest.raises(HarnessError, match="no guest named 'iso-z'"):
        runner.pair(playbook.cases()[0])


def _guest_copy(tmp_path, with_built_parts: bool):
    """The guest packages' folders as the harness uploads them (copytree keeps the files' times)."""
    root = tmp_path / "src"
    skip = ("__pycache__",) if with_built_parts else ("__pycache__", "*.so")
    for name in ("isostack", "isoperf"):
        shutil.copytree(GUEST_ROOT / name, root / name, ignore=shutil.ignore_patterns(*skip))
    runner = Runner(local_topology(), {}, GuestLayout(), None, Console(file=open(tmp_path / "c.txt", "w")),
                    guest_root=root)
    return root, runner


def test_check_native_finds_the_so_files_built_into_the_uploaded_packages(tmp_path):
    root, runner = _guest_copy(tmp_path, with_built_parts=True)
    runner.check_native()  # installing the project built them (setup.py); nothing is compiled here
    assert (root / "isostack" / "_atomics.so").exists()
    assert list((root / "isostack").glob("_fastpath*.so"))
    assert list((root / "isostack").glob("_dispatch*.so"))  # isostackd's hot path travels with the package
    assert list((root / "isoperf").glob("_sendloop*.so"))
    assert (root / "isostack" / "libisostack-preload.so").exists()  # the preload shim travels with the package


def test_check_native_refuses_packages_without_their_built_parts_naming_the_command(tmp_path):
    _root, runner = _guest_copy(tmp_path, with_built_parts=False)
    with pytest.raises(HarnessError, match=r"isostack: _atomics is not built; isostack: _dispatch is not built; "
                                           r"isostack: _fastpath is not built; "
                                           r"isostack: libisostack-preload is not built; "
                                           r"isoperf: _sendloop is not built.*`make native`"):
        runner.check_native()


def test_check_native_refuses_a_part_older_than_its_source(tmp_path):
    root, runner = _guest_copy(tmp_path, with_built_parts=True)
    built = next((root / "isostack").glob("_fastpath*.so"))
    os.utime(built, (1, 1))
    with pytest.raises(HarnessError, match=rf"isostack: {built.name} is older than _fastpath.c; build them with "
                                           r"`make native`"):
        runner.check_native()


def test_the_shipped_instances_playbook_fits_the_testbed_its_header_names(tmp_path):
    from testbed.harness.playbook import load_playbook

    pb = load_playbook(Path(__file__).resolve().parents[1] / "playbooks" / "isostack-instances.yaml")
    runner, _c, _s = instances_runner(tmp_path, vcpus=3, queues=2)
    runner.check_playbook(pb)
    runner, _c, _s = instances_runner(tmp_path, vcpus=2, queues=1)
    with pytest.raises(HarnessError, match=r"isostack-instances\.yaml:20: .*`testbed up --vcpus 3 --queues 2`"):
        runner.check_playbook(pb)


def test_a_legacy_only_playbook_needs_no_particular_testbed_but_apart_needs_two_vcpus(tmp_path):
    runner, _c, _s = instances_runner(tmp_path, vcpus=1, queues=1)
    legacy = ISO_PB.replace("    stack: iso\n", "")
    for placement in ("irq", "spread"):
        runner.check_playbook(parse_playbook(legacy + f"    placement: {placement}\n"))
    with pytest.raises(HarnessError) as e:  # the default: the application and the interrupts on two vCPUs
        runner.check_playbook(parse_playbook(legacy, "pb.yaml"))
    assert str(e.value).startswith("pb.yaml:5: tests[0] (stream-iso): placement 'apart' ")
    assert "iso-a has 1" in str(e.value) and "`testbed up --vcpus 2`" in str(e.value)
    runner.topology.guests[0].vcpus = 2
    with pytest.raises(HarnessError) as e:  # the server guest too (it gets the same legacy placement)
        runner.check_playbook(parse_playbook(legacy + "    placement: [irq, apart]\n", "pb.yaml"))
    assert str(e.value).startswith("pb.yaml:10: tests[0]") and "iso-b has 1" in str(e.value)

"""NIC placement on a fake sysfs/procfs: the legacy spread (round-robin IRQs and XPS over all vCPUs, RPS off)
and how it undoes an IsoStack placement; the placement CLI."""

import pytest

from isostack import placement


def fake_tree(tmp_path, queues=2, cpus="0-2"):
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    dev = sysfs / "devices/pci0000:00/0000:00:03.0/virtio1"
    drv = sysfs / "bus/virtio/drivers/virtio_net"
    drv.mkdir(parents=True)
    dev.mkdir(parents=True)
    (dev / "driver").symlink_to(drv)
    iface = sysfs / "class/net/eth1"
    for q in range(queues):
        (iface / "queues" / f"rx-{q}").mkdir(parents=True)
        (iface / "queues" / f"tx-{q}").mkdir(parents=True)
    (iface / "device").symlink_to(dev)
    (sysfs / "devices/system/cpu").mkdir(parents=True)
    (sysfs / "devices/system/cpu/online").write_text(cpus + "\n")
    proc.mkdir()
    lines = [" 24:  0  0  PCI-MSI 49152-edge  virtio1-config"]
    irq = 25
    vectors = {}
    for q in range(queues):
        for kind in ("input", "output"):
            lines.append(f" {irq}:  10  0  PCI-MSI {49153 + irq}-edge  virtio1-{kind}.{q}")
            (proc / "irq" / str(irq)).mkdir(parents=True)
            vectors[(kind, q)] = irq
            irq += 1
    (proc / "interrupts").write_text("\n".join(lines) + "\n")
    return proc, sysfs, iface, vectors


def affinity(proc, irq):
    return (proc / f"irq/{irq}/smp_affinity_list").read_text().strip()


def test_legacy_spreads_queue_pairs_round_robin_and_turns_rps_off(tmp_path):
    proc, sysfs, iface, vec = fake_tree(tmp_path, queues=3, cpus="0-1")
    placement.place(1, None, str(proc), str(sysfs))  # IsoStack first: everything on CPU 1, RPS to CPU 1
    assert {affinity(proc, irq) for irq in vec.values()} == {"1"}
    assert (iface / "queues/rx-0/rps_cpus").read_text() == "00000002\n"
    lines = placement.place_legacy(None, str(proc), str(sysfs))
    for (kind, q), irq in vec.items():
        assert affinity(proc, irq) == str(q % 2), (kind, q)  # queue 2 wraps to CPU 0
    for q in range(3):
        assert (iface / f"queues/rx-{q}/rps_cpus").read_text() == "00000000\n"
        assert (iface / f"queues/tx-{q}/xps_cpus").read_text() == placement.cpu_mask({q % 2}) + "\n"
    assert len(lines) == 6 + 3 + 3


def test_legacy_uses_every_online_cpu(tmp_path):
    proc, sysfs, iface, vec = fake_tree(tmp_path, queues=4, cpus="0-3")
    placement.place_legacy(None, str(proc), str(sysfs))
    assert [affinity(proc, vec[("input", q)]) for q in range(4)] == ["0", "1", "2", "3"]
    assert placement.online_cpus(str(sysfs)) == {0, 1, 2, 3}
    placement.place_legacy(None, str(proc), str(sysfs), cpus={2, 3})
    assert [affinity(proc, vec[("output", q)]) for q in range(4)] == ["2", "3", "2", "3"]


def test_legacy_reports_what_it_could_not_do(tmp_path):
    proc, sysfs, _iface, _vec = fake_tree(tmp_path)
    (proc / "interrupts").unlink()
    lines = placement.place_legacy(None, str(proc), str(sysfs))
    assert any(line.startswith("cannot read") for line in lines)
    assert placement.place_legacy(["eth9"], str(proc), str(sysfs))[0].startswith("eth9: not a virtio-net")


def test_cli_legacy_and_isostack_modes(tmp_path, capsys):
    proc, sysfs, iface, vec = fake_tree(tmp_path, queues=2, cpus="0-1")
    assert placement.main(["--cpu", "1", "--queues", "1", "--proc-root", str(proc), "--sys-root", str(sysfs)]) == 0
    assert affinity(proc, vec[("input", 1)]) == "1"
    assert not (proc / f"irq/{vec[('input', 0)]}/smp_affinity_list").exists()  # queue 0 is another instance's
    assert placement.main(["--legacy", "--proc-root", str(proc), "--sys-root", str(sysfs)]) == 0
    assert affinity(proc, vec[("input", 0)]) == "0"
    out = capsys.readouterr().out
    assert "rps_cpus = 00000000" in out
    (proc / "interrupts").unlink()
    assert placement.main(["--legacy", "--proc-root", str(proc), "--sys-root", str(sysfs)]) == 1


def test_single_queue_nic_has_no_xps_and_that_is_not_a_failure(tmp_path, capsys):
    """Linux answers ENOENT to writing tx-0/xps_cpus of a single-queue device (seen in the guests); a dangling
    symlink reproduces that answer here."""
    proc, sysfs, iface, vec = fake_tree(tmp_path, queues=1, cpus="0-1")
    (iface / "queues/tx-0/xps_cpus").symlink_to(tmp_path / "no-such-dir" / "xps_cpus")
    for lines in (placement.place_legacy(None, str(proc), str(sysfs)), placement.place(1, None, str(proc), str(sysfs))):
        xps = [line for line in lines if "xps_cpus" in line]
        assert len(xps) == 1 and "not used (XPS needs more than one tx queue)" in xps[0], lines
        assert not any("cannot" in line for line in lines), lines
    assert placement.main(["--legacy", "--proc-root", str(proc), "--sys-root", str(sysfs)]) == 0


def test_cli_legacy_irq_cpus_puts_every_queue_on_that_vcpu(tmp_path, capsys):
    """The harness's `apart`/`irq` placements: every queue's interrupt (and XPS) on one vCPU, RPS off."""
    proc, sysfs, iface, vec = fake_tree(tmp_path, queues=2, cpus="0-1")
    args = ["--proc-root", str(proc), "--sys-root", str(sysfs)]
    assert placement.main(["--legacy", "--irq-cpus", "1", *args]) == 0
    assert {affinity(proc, irq) for irq in vec.values()} == {"1"}
    for q in range(2):
        assert (iface / f"queues/rx-{q}/rps_cpus").read_text() == "00000000\n"
        assert (iface / f"queues/tx-{q}/xps_cpus").read_text() == "00000002\n"


def test_cli_legacy_irq_cpus_refuses_an_offline_cpu_and_moves_nothing(tmp_path, capsys):
    proc, sysfs, _iface, vec = fake_tree(tmp_path, queues=2, cpus="0-1")
    assert placement.main(["--legacy", "--irq-cpus", "2", "--proc-root", str(proc), "--sys-root", str(sysfs)]) == 1
    assert "cannot place on CPU 2: not online (online: 0-1)" in capsys.readouterr().out
    assert not any((proc / f"irq/{irq}/smp_affinity_list").exists() for irq in vec.values())


@pytest.mark.parametrize("bad", ["x", "1-", "-1", "1,,2", "0-99999999"])
def test_cli_irq_cpus_rejects_what_is_not_a_cpu_list(tmp_path, capsys, bad):
    proc, sysfs, _iface, _vec = fake_tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        placement.main(["--legacy", f"--irq-cpus={bad}", "--proc-root", str(proc), "--sys-root", str(sysfs)])
    assert e.value.code == 2 and "not a list of CPUs" in capsys.readouterr().err


def test_cli_irq_cpus_goes_with_legacy_only(capsys):
    with pytest.raises(SystemExit):
        placement.main(["--cpu", "1", "--irq-cpus", "1"])
    assert "--irq-cpus goes with --legacy" in capsys.readouterr().err

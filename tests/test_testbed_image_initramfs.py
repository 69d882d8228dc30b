"""testbed.image.initramfs: module load order and recipe typos, from modules.dep texts."""

from __future__ import annotations

from testbed.image import initramfs
from testbed.image.initramfs import module_load_order

MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
"""  # noqa: E501


def test_module_load_order_puts_dependencies_first_and_skips_builtins():
    order = module_load_order(MODULES_DEP, ["virtio_pci", "virtio_blk", "crc32c-intel", "ext4", "sd_mod"])
    names = [p.rsplit("/", 1)[1] for p in order]
    assert sorted(names) == sorted(
        ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko", "virtio_blk.ko",
         "crc32c-intel.ko", "crc16.ko", "mbcache.ko", "jbd2.ko", "ext4.ko"]
    )  # fmt: skip
    assert len(names) == len(set(names))
    for before, after in [("virtio_ring.ko", "virtio.ko"), ("virtio.ko", "virtio_pci.ko"),
                          ("virtio_pci_modern_dev.ko", "virtio_pci.ko"), ("virtio.ko", "virtio_blk.ko"),
                          ("jbd2.ko", "ext4.ko"), ("crc16.ko", "ext4.ko")]:  # fmt: skip
        assert names.index(before) < names.index(after)


def test_unknown_initramfs_modules_are_reported():
    builtin = "kernel/drivers/virtio/virtio_mmio.ko\nkernel/lib/crc32.ko\n"
    wanted = ["virtio_blk", "crc32c-intel", "virtio_mmio", "crc32", "ext5"]
    assert initramfs.unknown_modules(MODULES_DEP, builtin, wanted) == ["ext5"]

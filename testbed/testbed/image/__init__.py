"""Guest images for the testbed: a Debian kernel, a busybox initramfs and a debootstrapped ext4 rootfs.

Images are built offline from Debian packages (no cloud images, no loop mounts) and cached under
``~/.cache/isostack-testbed/images/<recipe-hash>/``. The hash covers every file in ``vm-images/`` and
``BUILDER_VERSION``, so changing the recipe, the init scripts or the builder gives a new cache entry.
Builds run in a temporary directory that is renamed into place at the end, so an interrupted build
never leaves a half-built image behind.

One module per concept, imports only downward (checked by the `testbed-image-layers` contract):

    cache      ensure_image: the cache of built images, one build at a time, swapped in whole
    build      ImageBuilder: the build steps in order, their timings and the manifest
    kernel     the kernel package (download, unpack) and vmlinux extraction from the bzImage
    rootfs     debootstrap, kernel modules, the recipe's overlay files, rootfs.ext4
    initramfs  module load order and the busybox initramfs
    keys       the guest's SSH host keys and the image's own root key
    mirror     the Debian mirror, found in the host's apt configuration
    overlay    create_overlay: a guest's qcow2 disk on top of the read-only rootfs
    cmdline    kernel_cmdline: the kernel command line contract with the guest init, and its input checks
    recipe     vm-images/recipe.yaml and the recipe hash that names a cache entry
    tools      the host commands a build runs, and how a failing one is reported
    artifacts  GuestImage (the files of a built image) and ImageBuildError
"""

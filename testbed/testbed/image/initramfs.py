"""The initramfs: a static busybox, the recipe's init script and the kernel modules needed to mount root.

Debian's kernel has virtio and ext4 as modules, so the initramfs carries them (with their dependencies, in
load order) and a tiny /init loads them and switches to the rootfs; no initramfs-tools in the build.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

from testbed.image.artifacts import ImageBuildError
from testbed.image.recipe import RECIPE_DIR
from testbed.image.tools import run_tool

# The busybox applets the initramfs /init uses.
INITRAMFS_APPLETS = (
    "sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat", "mkdir", "echo", "basename", "tr",
)  # fmt: skip


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Map module name (with '-' as '_') to (path, [dependency paths]) from a modules.dep text."""
    modules = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        modules[name] = (path, deps.split())
    return modules


def module_load_order(modules_dep: str, wanted: list[str]) -> list[str]:
    """Paths of ``wanted`` modules and their dependencies, each after everything it depends on.

    Names not found are taken to be built into the kernel and skipped.
    """
    modules = parse_modules_dep(modules_dep)
    by_path = {path: deps for path, deps in modules.values()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists the full transitive closure, deepest dependencies last.
        for dep in reversed(by_path.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        entry = modules.get(name.replace("-", "_"))
        if entry:
            visit(entry[0])
    return order


def unknown_modules(modules_dep: str, modules_builtin: str, wanted: list[str]) -> list[str]:
    """Names in ``wanted`` that are neither loadable modules nor built into the kernel (recipe typos)."""
    known = set(parse_modules_dep(modules_dep))
    known |= {Path(line).name.split(".ko")[0].replace("-", "_") for line in modules_builtin.split()}
    return [name for name in wanted if name.replace("-", "_") not in known]


def build_initramfs(rootfs: Path, kernel_version: str, wanted: list[str], tree: Path, initrd: Path) -> list[str]:
    """Write the gzipped cpio ``initrd`` from a tree assembled in ``tree``; the module file names, in load order.

    The modules come from the rootfs (after its depmod), so the initramfs and the rootfs always match.
    """
    ver = kernel_version
    modules_dir = rootfs / "usr" / "lib" / "modules" / ver
    modules_dep = (modules_dir / "modules.dep").read_text()
    builtin_file = modules_dir / "modules.builtin"
    builtin = builtin_file.read_text() if builtin_file.exists() else ""
    unknown = unknown_modules(modules_dep, builtin, wanted)
    if unknown:
        raise ImageBuildError(f"initramfs_modules not in kernel {ver}: {', '.join(unknown)}")
    order = module_load_order(modules_dep, wanted)
    for sub in ("bin", "sbin", "proc", "sys", "dev", "newroot", "lib/modules"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise ImageBuildError("busybox (busybox-static) is not installed; see testbed/install-deps.sh")
    run_tool(
        ["sh", "-c", f"ldd {busybox} 2>&1 | grep -q 'not a dynamic'"],
        what="check busybox is static (install busybox-static)",
    )
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    for applet in INITRAMFS_APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    names = []
    for rel in order:
        shutil.copyfile(modules_dir / rel, tree / "lib" / "modules" / Path(rel).name)
        names.append(Path(rel).name)
    (tree / "lib" / "modules" / "modules.list").write_text("".join(n + "\n" for n in names))
    shutil.copyfile(RECIPE_DIR / "initramfs" / "init", tree / "init")
    (tree / "init").chmod(0o755)

    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        input="\n".join(files).encode(), cwd=tree, capture_output=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ImageBuildError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    initrd.write_bytes(gzip.compress(proc.stdout, compresslevel=6, mtime=0))
    return names

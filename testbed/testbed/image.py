"""Guest images for the testbed: a Debian kernel, a busybox initramfs and a debootstrapped ext4 rootfs.

Images are built offline from Debian packages (no cloud images, no loop mounts) and cached under
``~/.cache/isostack-testbed/images/<recipe-hash>/``. The hash covers every file in ``vm-images/`` and
``BUILDER_VERSION``, so changing the recipe, the init scripts or the builder gives a new cache entry.
Builds run in a temporary directory that is renamed into place at the end, so an interrupted build
never leaves a half-built image behind.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import hashlib
import ipaddress
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

# Bump when the build steps change in a way that changes the produced image.
BUILDER_VERSION = "1"

RECIPE_DIR = Path(__file__).resolve().parents[2] / "vm-images"

ARTIFACTS = ("vmlinux", "vmlinuz", "initrd.img", "rootfs.ext4", "id_ed25519", "id_ed25519.pub")

# Host commands a build runs (checked up front so a missing one fails before the slow steps).
BUILD_TOOLS = ("apt-cache", "apt-get", "dpkg-deb", "debootstrap", "chroot", "ssh-keygen", "busybox", "cpio", "mke2fs")

# The busybox applets the initramfs /init uses.
INITRAMFS_APPLETS = (
    "sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat", "mkdir", "echo", "basename", "tr",
)  # fmt: skip


class ImageBuildError(RuntimeError):
    """Building or validating a guest image failed; the message says why and what to do."""


@dataclass(frozen=True)
class GuestImage:
    """A built image in the cache; all paths are inside ``dir``."""

    dir: Path
    kernel: Path  # uncompressed vmlinux: boots via PVH, much faster under TCG than the bzImage
    kernel_compressed: Path  # Debian's vmlinuz (bzImage), for loaders that need it
    initrd: Path
    rootfs: Path  # raw ext4, the backing file of the guests' qcow2 overlays
    ssh_key: Path  # private key authorised for root in the guest
    ssh_pubkey: Path
    kernel_version: str
    recipe_hash: str

    @classmethod
    def from_dir(cls, path: Path) -> GuestImage:
        """Load a cached image from its manifest."""
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(
            dir=path,
            kernel=path / "vmlinux",
            kernel_compressed=path / "vmlinuz",
            initrd=path / "initrd.img",
            rootfs=path / "rootfs.ext4",
            ssh_key=path / "id_ed25519",
            ssh_pubkey=path / "id_ed25519.pub",
            kernel_version=manifest["kernel_version"],
            recipe_hash=manifest["recipe_hash"],
        )


# --- recipe -------------------------------------------------------------------------------------------


def load_recipe(recipe_dir: Path = RECIPE_DIR) -> dict:
    """Read and sanity-check vm-images/recipe.yaml."""
    path = recipe_dir / "recipe.yaml"
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImageBuildError(f"cannot read image recipe {path}: {exc}") from exc
    for key in ("suite", "variant", "kernel_metapackage", "packages", "initramfs_modules"):
        if key not in recipe:
            raise ImageBuildError(f"image recipe {path} lacks the key {key!r}")
    return recipe


def recipe_hash(recipe_dir: Path = RECIPE_DIR) -> str:
    """Content hash of every recipe file (path, executable bit, bytes) and the builder version."""
    digest = hashlib.sha256(f"isostack-image-builder {BUILDER_VERSION}\n".encode())
    files = sorted(p for p in recipe_dir.rglob("*") if p.is_file())
    if not files:
        raise ImageBuildError(f"no recipe files in {recipe_dir}")
    for path in files:
        rel = path.relative_to(recipe_dir).as_posix()
        executable = os.access(path, os.X_OK)
        data = path.read_bytes()
        digest.update(f"{rel}\0{int(executable)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


# --- input validation and the kernel command line -------------------------------------------------------

_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def validate_hostname(name: str) -> str:
    """A single DNS label: it goes on the kernel command line and into /etc/hosts."""
    if not _HOSTNAME_RE.match(name):
        raise ValueError(f"invalid guest hostname {name!r}: use 1-63 letters, digits or '-', not at the ends")
    return name


def validate_mac(mac: str) -> str:
    """Return the MAC in lower case (the guest compares it with /sys/class/net/*/address)."""
    if not _MAC_RE.match(mac):
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex pairs like 52:54:00:ff:00:01")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"invalid MAC address {mac!r}: multicast bit set in the first octet")
    return mac.lower()


def validate_cidr(cidr: str) -> str:
    """An IPv4 host address with its prefix length, e.g. 10.10.0.1/24 (not a network address)."""
    if "/" not in cidr:
        raise ValueError(f"invalid interface address {cidr!r}: expected <ip>/<prefix>, e.g. 10.10.0.1/24")
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError as exc:
        raise ValueError(f"invalid interface address {cidr!r}: {exc}") from exc
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"invalid interface address {cidr!r}: that is the network or broadcast address")
    return str(iface)


def kernel_cmdline(
    image: GuestImage, hostname: str, ifaddrs: list[tuple[str, str]], extra: list[str] | None = None
) -> str:
    """The full command line for direct kernel boot of ``image``.

    ifaddrs are (mac, ip/prefix) pairs; ``extra`` are further kernel parameters such as
    ``isolcpus=1 nohz_full=1`` for a dedicated core (they may not set isostack.* or root=).
    """
    del image  # every image built by this recipe takes the same command line
    parts = [
        "console=ttyS0",
        "quiet",
        "loglevel=1",
        "root=/dev/vda",
        "rootfstype=ext4",
        "rw",
        "panic=-1",
        "tsc=reliable",
        "no_timer_check",
        "random.trust_cpu=on",
        f"isostack.hostname={validate_hostname(hostname)}",
    ]
    seen: set[str] = set()
    for mac, cidr in ifaddrs:
        mac = validate_mac(mac)
        if mac in seen:
            raise ValueError(f"MAC address {mac} given twice")
        seen.add(mac)
        parts.append(f"isostack.ifaddr={mac},{validate_cidr(cidr)}")
    for param in extra or []:
        if not param or any(c.isspace() for c in param) or '"' in param:
            raise ValueError(f"invalid extra kernel parameter {param!r}: one word, no spaces or quotes")
        if param.startswith(("isostack.", "root=", "rootfstype=", "console=")):
            raise ValueError(f"extra kernel parameter {param!r} would override the image's own settings")
        parts.append(param)
    return " ".join(parts)


def create_overlay(image: GuestImage, path: Path) -> Path:
    """Create a qcow2 overlay backed by the image's read-only rootfs, so guests never touch the cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.rootfs), str(path)],
        what="qemu-img create (overlay)",
    )
    return path


# --- apt mirror discovery -------------------------------------------------------------------------------


def find_debian_mirror(suite: str, sources: list[tuple[str, str]]) -> str:
    """Pick the first http(s) Debian mirror serving ``suite`` main from apt config texts.

    ``sources`` is a list of (filename, text): deb822 ``*.sources`` files and one-line ``*.list`` files.
    """
    for name, text in sources:
        entries = _parse_deb822(text) if name.endswith(".sources") else _parse_one_line(text)
        for types, uris, suites, components in entries:
            if "deb" not in types or suite not in suites or "main" not in components:
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://")):
                    return uri.rstrip("/")
    raise ImageBuildError(
        f"no Debian mirror for '{suite} main' (http/https, Types: deb) found in the apt configuration "
        "(/etc/apt/sources.list, /etc/apt/sources.list.d/); add one and run apt-get update"
    )


def _parse_deb822(text: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:  # continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        entries.append(tuple(fields.get(k, "").split() for k in ("types", "uris", "suites", "components")))
    return entries


def _parse_one_line(text: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=amd64 signed-by=...] options
        words = line.split()
        if len(words) >= 4 and words[0] in ("deb", "deb-src"):
            entries.append(([words[0]], [words[1]], [words[2]], words[3:]))
    return entries


def system_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """The machine's apt source files as (name, text), sources.list first."""
    paths = [etc_apt / "sources.list"] + sorted((etc_apt / "sources.list.d").glob("*"))
    return [
        (p.name, p.read_text(errors="replace")) for p in paths if p.is_file() and p.name.endswith((".list", ".sources"))
    ]


# --- vmlinux extraction ---------------------------------------------------------------------------------

# Magic bytes of the compressors a Linux bzImage payload can use.
_MAGICS = {
    "gzip": b"\x1f\x8b\x08",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x02\x21\x4c\x18",
    "bzip2": b"BZh",
    "lzma": b"\x5d\x00\x00",
}


def _decompress(fmt: str, data: bytes) -> bytes:
    """Decompress one stream of ``fmt`` at the start of ``data``, ignoring whatever follows it."""
    if fmt == "gzip":
        return zlib.decompressobj(wbits=31).decompress(data)
    if fmt == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if fmt == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if fmt == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    # No zstd/lz4 in the Python 3.11 standard library: use the command-line tools; they may complain
    # about trailing bytes after the stream, but what they wrote to stdout is the decompressed data.
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[fmt]
    try:
        proc = subprocess.run(tool, input=data, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{tool[0]} is needed to decompress this kernel") from exc
    return proc.stdout


def _payload_candidates(blob: bytes) -> list[tuple[int, int, str]]:
    """(offset, end, format) of possible compressed payloads, the boot header's own one first."""
    candidates = []
    # x86 boot protocol >= 2.08: payload_offset/payload_length at 0x248, relative to the protected-mode
    # code that starts after the (setup_sects + 1) * 512 bytes of real-mode setup.
    if len(blob) > 0x250 and blob[0x202:0x206] == b"HdrS":
        setup_sects = blob[0x1F1] or 4
        offset, length = struct.unpack_from("<II", blob, 0x248)
        start = (setup_sects + 1) * 512 + offset
        if length and start + length <= len(blob):
            for fmt, magic in _MAGICS.items():
                if blob.startswith(magic, start):
                    candidates.append((start, start + length, fmt))
    found = []
    for fmt, magic in _MAGICS.items():
        pos = blob.find(magic)
        while pos != -1:
            found.append((pos, len(blob), fmt))
            pos = blob.find(magic, pos + 1)
    return candidates + sorted(found)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the uncompressed ELF kernel inside a bzImage (what scripts/extract-vmlinux does)."""
    for start, end, fmt in _payload_candidates(bzimage):
        try:
            data = _decompress(fmt, bzimage[start:end])
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
            continue
        if data.startswith(b"\x7fELF"):
            return data
    raise ImageBuildError("no compressed ELF kernel found in the bzImage (gzip/xz/zstd/lz4/bzip2/lzma)")


# --- modules ---------------------------------------------------------------------------------------------


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


# --- helpers --------------------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a build command; on failure raise ImageBuildError with the tail of its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: {cmd[0]} is not installed (see testbed/install-deps.sh)") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _mounts_under(path: Path, mountinfo: str) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo text), deepest first."""
    root = os.path.realpath(path)
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...)
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a build directory, first detaching anything a killed debootstrap left mounted in it.

    Without this, rmtree could descend into a bind-mounted host /dev or /proc inside the chroot.
    """
    if not path.exists():
        return
    for point in _mounts_under(path, Path("/proc/self/mountinfo").read_text()):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounts_under(path, Path("/proc/self/mountinfo").read_text()):
        raise ImageBuildError(f"cannot remove {path}: file systems are still mounted in it")
    shutil.rmtree(path, ignore_errors=True)


def _empty_dir(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# --- the build ------------------------------------------------------------------------------------------


class _Builder:
    """One image build into ``work``; each step is a method so failures name the step."""

    def __init__(self, recipe: dict, cache_root: Path, work: Path, console: Console) -> None:
        self.recipe = recipe
        self.cache_root = cache_root
        self.work = work
        self.out = work / "image"
        self.rootfs = work / "rootfs"
        self.console = console
        self.deb_cache = cache_root / "debs"
        self.kernel_version = ""
        self.timings: dict[str, float] = {}

    def step(self, title: str, func) -> None:
        start = time.monotonic()
        with self.console.status(f"[bold]image:[/] {title}…"):
            func()
        elapsed = time.monotonic() - start
        self.timings[title] = round(elapsed, 1)
        self.console.print(f"  [green]✓[/] {title} [dim]({elapsed:.1f} s)[/]")

    def build(self) -> None:
        self.out.mkdir(parents=True)
        self.deb_cache.mkdir(parents=True, exist_ok=True)
        self.mirror = find_debian_mirror(self.recipe["suite"], system_apt_sources())
        self.console.print(f"  Debian mirror from apt config: {self.mirror}")
        self.step("download and unpack the kernel", self.fetch_kernel)
        self.step(f"debootstrap {self.recipe['suite']} ({len(self.recipe['packages'])} packages)", self.debootstrap)
        self.step("install modules, overlay files and SSH keys", self.configure_rootfs)
        self.step("extract vmlinux", self.extract_kernel)
        self.step("build the initramfs", self.build_initramfs)
        self.step("make rootfs.ext4", self.make_ext4)

    def fetch_kernel(self) -> None:
        meta = self.recipe["kernel_metapackage"]
        proc = _run(["apt-cache", "depends", meta], what=f"apt-cache depends {meta}")
        match = re.search(r"Depends: (linux-image-(\d[^\s]*-amd64))$", proc.stdout, re.M)
        if not match:
            raise ImageBuildError(f"cannot resolve the kernel package behind {meta}; run apt-get update")
        package, self.kernel_version = match.group(1), match.group(2)
        debs = sorted(self.deb_cache.glob(f"{package}_*.deb"))
        if not debs:
            _run(["apt-get", "download", "-q", package], what=f"apt-get download {package}", cwd=self.deb_cache)
            debs = sorted(self.deb_cache.glob(f"{package}_*.deb"))
        if not debs:
            raise ImageBuildError(f"apt-get download {package} produced no .deb in {self.deb_cache}")
        self.kernel_deb = debs[-1]
        self.kernel_tree = self.work / "kernel"
        _run(["dpkg-deb", "-x", str(self.kernel_deb), str(self.kernel_tree)], what="dpkg-deb -x")
        shutil.copyfile(self.kernel_tree / "boot" / f"vmlinuz-{self.kernel_version}", self.out / "vmlinuz")

    def debootstrap(self) -> None:
        r = self.recipe
        _run(
            [
                "debootstrap", f"--variant={r['variant']}", f"--cache-dir={self.deb_cache}",
                "--include=" + ",".join(r["packages"]), r["suite"], str(self.rootfs), self.mirror,
            ],
            what="debootstrap",
        )  # fmt: skip

    def configure_rootfs(self) -> None:
        ver = self.kernel_version
        modules = self.rootfs / "usr" / "lib" / "modules" / ver
        shutil.copytree(self.kernel_tree / "lib" / "modules" / ver, modules, symlinks=True)
        for rel in self.recipe.get("modules_prune", []):
            target = modules / "kernel" / rel
            if ".." in Path(rel).parts or not target.is_dir():
                raise ImageBuildError(f"modules_prune entry {rel!r} is not a directory of the modules tree")
            shutil.rmtree(target)
        # Debian's package has no modules.dep: the postinst would make it. Use the guest's own depmod.
        _run(["chroot", str(self.rootfs), "depmod", "-a", ver], what="depmod in the rootfs")

        overlay = RECIPE_DIR / "rootfs"
        for src in sorted(p for p in overlay.rglob("*") if p.is_file()):
            dst = self.rootfs / src.relative_to(overlay)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink():
                dst.unlink()
            shutil.copyfile(src, dst)
            dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)

        for rel in self.recipe.get("prune", []):
            _empty_dir(self.rootfs / rel)
        (self.rootfs / "etc" / "fstab").write_text("# root is mounted by the initramfs\n")

        # Host keys: openssh-server's postinst made them; -A fills in any that are missing.
        _run(["chroot", str(self.rootfs), "ssh-keygen", "-A"], what="ssh-keygen -A in the rootfs")
        key = self.out / "id_ed25519"
        _run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "isostack-testbed", "-f", str(key)],
            what="ssh-keygen (image key)",
        )
        ssh_dir = self.rootfs / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        ssh_dir.chmod(0o700)
        auth = ssh_dir / "authorized_keys"
        auth.write_text((self.out / "id_ed25519.pub").read_text())
        auth.chmod(0o600)

    def extract_kernel(self) -> None:
        vmlinux = extract_vmlinux((self.out / "vmlinuz").read_bytes())
        (self.out / "vmlinux").write_bytes(vmlinux)

    def build_initramfs(self) -> None:
        ver = self.kernel_version
        modules_dir = self.rootfs / "usr" / "lib" / "modules" / ver
        modules_dep = (modules_dir / "modules.dep").read_text()
        builtin_file = modules_dir / "modules.builtin"
        builtin = builtin_file.read_text() if builtin_file.exists() else ""
        unknown = unknown_modules(modules_dep, builtin, self.recipe["initramfs_modules"])
        if unknown:
            raise ImageBuildError(f"initramfs_modules not in kernel {ver}: {', '.join(unknown)}")
        order = module_load_order(modules_dep, self.recipe["initramfs_modules"])
        tree = self.work / "initramfs"
        for sub in ("bin", "sbin", "proc", "sys", "dev", "newroot", "lib/modules"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not Path(busybox).exists():
            raise ImageBuildError("busybox (busybox-static) is not installed; see testbed/install-deps.sh")
        _run(
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
        self.initramfs_modules = names

        files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        proc = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            input="\n".join(files).encode(), cwd=tree, capture_output=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ImageBuildError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
        (self.out / "initrd.img").write_bytes(gzip.compress(proc.stdout, compresslevel=6, mtime=0))

    def make_ext4(self) -> None:
        used = _dir_size(self.rootfs)
        size_mib = used // 2**20 * 11 // 10 + int(self.recipe.get("rootfs_free_mib", 512))
        _run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "isostack-root", "-E", "lazy_itable_init=0",
             "-d", str(self.rootfs), str(self.out / "rootfs.ext4"), f"{size_mib}M"],
            what="mke2fs -d",
        )  # fmt: skip
        self.rootfs_used = used

    def write_manifest(self, digest: str, started: float) -> None:
        manifest = {
            "recipe_hash": digest,
            "builder_version": BUILDER_VERSION,
            "kernel_version": self.kernel_version,
            "kernel_deb": self.kernel_deb.name,
            "suite": self.recipe["suite"],
            "packages": self.recipe["packages"],
            "mirror": self.mirror,
            "initramfs_modules": self.initramfs_modules,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "step_seconds": self.timings,
            "rootfs_used_bytes": self.rootfs_used,
            "sizes": {name: (self.out / name).stat().st_size for name in ARTIFACTS},
        }
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _is_complete(path: Path) -> bool:
    return (path / "manifest.json").is_file() and all((path / name).is_file() for name in ARTIFACTS)


def ensure_image(cache_root: Path | None = None, force: bool = False, console: Console | None = None) -> GuestImage:
    """Return the cached image for the current recipe, building it first if it is missing (or ``force``)."""
    console = console or Console(stderr=True)
    if cache_root is None:
        from testbed.state import cache_root as default_cache_root  # honours ISOSTACK_CACHE_DIR

        cache_root = default_cache_root()
    cache_root = Path(cache_root)
    digest = recipe_hash()
    images = cache_root / "images"
    final = images / digest
    if not force and _is_complete(final):
        console.print(f"image {digest}: cached in {final}", soft_wrap=True)
        return GuestImage.from_dir(final)

    if os.geteuid() != 0:
        raise ImageBuildError("building a guest image needs root (debootstrap and chroot); run it as root")
    missing = [tool for tool in BUILD_TOOLS if not shutil.which(tool)]
    if missing:
        raise ImageBuildError(
            f"building a guest image needs {', '.join(missing)} on the host; "
            "install them with testbed/install-deps.sh (packages debootstrap, busybox-static, cpio, e2fsprogs, "
            "qemu-utils, openssh-client)"
        )
    recipe = load_recipe()
    images.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: a second caller waits and then finds the finished image.
    with open(images / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _is_complete(final):
            console.print(f"image {digest}: cached in {final}", soft_wrap=True)
            return GuestImage.from_dir(final)
        for stale in [*images.glob(".build-*"), *images.glob(".old-*")]:  # left by a killed build
            _remove_tree(stale)
        started = time.monotonic()
        console.print(f"[bold]Building guest image {digest}[/] into {final}", soft_wrap=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=images))
        try:
            builder = _Builder(recipe, cache_root, work, console)
            builder.build()
            builder.write_manifest(digest, started)
            if final.exists():  # force: move the old one aside, then swap in the new one
                old = images / f".old-{digest}-{os.getpid()}"
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            builder.out.rename(final)
        finally:
            _remove_tree(work)
    image = GuestImage.from_dir(final)
    sizes = json.loads((final / "manifest.json").read_text())["sizes"]
    console.print(
        f"[green]image {digest} built[/] in {time.monotonic() - started:.0f} s: kernel {image.kernel_version}, "
        f"rootfs.ext4 {sizes['rootfs.ext4'] / 2**20:.0f} MiB, initrd {sizes['initrd.img'] / 2**10:.0f} KiB",
        soft_wrap=True,
    )
    return image


__all__ = [
    "BUILDER_VERSION",
    "GuestImage",
    "ImageBuildError",
    "create_overlay",
    "ensure_image",
    "extract_vmlinux",
    "find_debian_mirror",
    "kernel_cmdline",
    "recipe_hash",
]

"""The C parts, built when the project is installed; everything else is declared in pyproject.toml.

Importing a module never compiles anything: `pip install .` and `pip install -e .` (what `make deps` runs) build
these, and `make native` rebuilds the ones older than their source. Each part is optional, so a machine
without a C compiler still installs; the loaders (vhea/native.py, isostack/native.py) then say what is missing
and vhea runs its Python datapath. `build_ext --required` (the Makefile's) turns a failed part into an error.

An editable install puts the built files next to their sources: the harness uploads the isostack folder itself
to the guests, which have no compiler, so the guest parts must be in that folder and built for the guests'
Python (Debian's python3.11: its headers where they are installed, and the same EXT_SUFFIX).
"""

from __future__ import annotations

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FLAGS = ["-O2", "-Wall", "-Werror"]
#: the guests' Python headers (Debian's python3.X-dev) where this host has them, else this interpreter's
DEBIAN_INCLUDE = f"/usr/include/python{sys.version_info.major}.{sys.version_info.minor}"
GUEST_INCLUDE = [DEBIAN_INCLUDE] if os.path.exists(os.path.join(DEBIAN_INCLUDE, "Python.h")) else []
#: plain shared libraries (loaded with ctypes, or with LD_PRELOAD): named <name>.so, not <name><EXT_SUFFIX>
CTYPES_LIBRARIES = {"isostack._atomics", "isostack.libisostack-preload"}


def native_part(name: str, source: str, extra_flags: tuple[str, ...] = (), for_guests: bool = False,
                libraries: tuple[str, ...] = (), depends: tuple[str, ...] = ()) -> Extension:
    """One optional C part; `for_guests`: a CPython extension the guests load (built against their headers)."""
    include = GUEST_INCLUDE if for_guests else []
    return Extension(name, [source], include_dirs=include, extra_compile_args=[*FLAGS, *extra_flags], optional=True,
                     libraries=list(libraries), depends=list(depends))


NATIVE_PARTS = [
    # host: the device model's native datapath (else the Python datapath)
    native_part("vhea._datapath", "device-model/vhea/_datapath.c", ("-std=gnu11",)),
    # guests: the front-end's fast path with the atomics; the atomics alone for ctypes; isoperf's C send loop
    native_part("isostack._fastpath", "isostack-guest/isostack/_fastpath.c", for_guests=True,
                depends=("isostack-guest/isostack/isostack_abi.h",)),
    native_part("isostack._atomics", "isostack-guest/isostack/_atomics.c", ("-std=c11",),
                depends=("isostack-guest/isostack/isostack_abi.h",)),
    # guests and host: isostackd's per-slot hot path (tx drain, rx fill, notification post)
    native_part("isostack._dispatch", "isostack-guest/isostack/_dispatch.c", for_guests=True),
    native_part("isoperf._sendloop", "isostack-guest/isoperf/_sendloop.c", for_guests=True),
    # guests and host: the preload shim that runs unmodified programs over IsoStack (isostack-run); plain C
    native_part("isostack.libisostack-preload", "isostack-guest/isostack/libisostack-preload.c", ("-std=gnu11",),
                libraries=("dl", "pthread"), depends=("isostack-guest/isostack/isostack_abi.h",)),
]


class BuildNative(build_ext):
    """build_ext that names the ctypes libraries <name>.so, puts a built file next to its source by a rename,
    and, with --required, fails on a part that does not build (a developer's compile error must not pass as
    'no compiler here')."""

    user_options = [*build_ext.user_options, ("required", None, "fail when a C part does not build")]
    boolean_options = [*build_ext.boolean_options, "required"]

    def initialize_options(self) -> None:
        super().initialize_options()
        self.required = False

    def run(self) -> None:
        if self.required:
            for ext in self.extensions:
                ext.optional = False
        super().run()

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Replace a built .so by a rename, never by rewriting it in place: a running vhea or isostackd has the
        old one mapped, and rewriting that file under it crashes it."""
        outfile = str(outfile)
        if not outfile.endswith(".so"):
            return super().copy_file(infile, outfile, *args, **kwargs)
        tmp = f"{outfile[:-3]}.tmp{os.getpid()}.so"
        _, copied = super().copy_file(infile, tmp, *args, **kwargs)
        os.replace(tmp, outfile)
        return outfile, copied

    def get_ext_filename(self, fullname: str) -> str:
        # called with the full dotted name and (by distutils) with the last part only: ext_map has both
        filename = super().get_ext_filename(fullname)
        ext = self.ext_map.get(fullname)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        if ext is not None and ext.name in CTYPES_LIBRARIES and filename.endswith(suffix):
            return filename[: -len(suffix)] + ".so"
        return filename


setup(ext_modules=NATIVE_PARTS, cmdclass={"build_ext": BuildNative})

"""Guest memory: the regions of SET_MEM_TABLE, mmapped, with checked address translation.

Descriptor addresses are guest-physical; ring addresses (SET_VRING_ADDR) are the front-end's virtual
addresses. Both translate to (region view, offset) and every access is bounds-checked, because the guest
is untrusted.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import MemoryRegion


class AddressError(Exception):
    """An address/length pair that is not wholly inside one mapped region."""


@dataclass(slots=True)
class MappedRegion:
    region: MemoryRegion
    map: mmap.mmap
    view: memoryview  # starts at mmap_offset, memory_size long
    #: the fd had F_SEAL_SHRINK: the front-end cannot shrink the file under the mapping (no SIGBUS possible)
    sealed: bool = False

    @property
    def gpa(self) -> int:
        return self.region.guest_phys_addr

    @property
    def uva(self) -> int:
        return self.region.userspace_addr

    @property
    def size(self) -> int:
        return self.region.memory_size


def shrink_sealed(fd: int) -> bool:
    """Whether the file has F_SEAL_SHRINK (QEMU's memory-backend-memfd seals; files and DPDK's memfd do not)."""
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:
        return False  # not a memfd/shmem file: no seals


class GuestMemory:
    """All regions of one memory table. `close()` unmaps them."""

    def __init__(self, regions: list[MappedRegion]) -> None:
        self.regions = regions
        #: (guest-physical base, size, view) per region: plain tuples for the per-descriptor lookup in vring.py
        #: (no attribute or property calls in the hot path)
        self.gpa_spans = [(r.gpa, r.size, r.view) for r in regions]
        self._native = None  # the native datapath's view of the regions (holds buffer exports until close)
        #: run by close() before the mappings go (the SIGBUS guard of net_backend.py lets go of them)
        self.on_close: list[Callable[[], None]] = []
        #: SIGBUS guard slots of the unsealed regions (net_backend.guard_memory)
        self.guards: list[int] = []

    def native(self, module):
        """The regions as the native datapath's Memory object (made once; released by close())."""
        m = self._native
        if m is None:
            m = self._native = module.Memory([(gpa, size, view) for gpa, size, view in self.gpa_spans])
        return m

    @classmethod
    def map(cls, regions: tuple[MemoryRegion, ...], fds: list[int]) -> GuestMemory:
        """mmap each region's fd (mmap_offset + size bytes from offset 0, as libvhost-user does).

        The fds are consumed: closed after mapping whether or not mapping works.
        """
        mapped: list[MappedRegion] = []
        try:
            if len(fds) != len(regions):
                raise AddressError(f"{len(regions)} memory regions but {len(fds)} fds")
            for r, fd in zip(regions, fds, strict=True):
                length = r.mmap_offset + r.memory_size
                try:
                    size = os.fstat(fd).st_size
                except OSError as e:
                    raise AddressError(f"fstat of region fd failed: {e}") from e
                if size and length > size:
                    raise AddressError(f"region needs {length} bytes but its fd has {size}")
                try:
                    m = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
                except (OSError, ValueError, OverflowError) as e:
                    raise AddressError(f"mmap of {length} bytes failed: {e}") from e
                view = memoryview(m)[r.mmap_offset:length]
                mapped.append(MappedRegion(r, m, view, shrink_sealed(fd)))
        except AddressError:
            cls(mapped).close()
            raise
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        return cls(mapped)

    def close(self) -> None:
        for release in self.on_close:
            release()
        self.on_close = []
        if self._native is not None:
            self._native.close()  # first: its buffer exports would keep the views below from being released
            self._native = None
        for r in self.regions:
            r.view.release()
            try:
                r.map.close()
            except BufferError:
                pass  # a ring still holds a view; the map goes when that is dropped
        self.regions = []
        self.gpa_spans = []

    def gpa(self, addr: int, length: int) -> memoryview:
        """Guest-physical [addr, addr+length) as a writable view; raises AddressError if not inside one region."""
        for base, size, view in self.gpa_spans:
            off = addr - base
            if 0 <= off and off + length <= size:
                return view[off:off + length]
        raise AddressError(f"guest address {addr:#x}+{length} is outside the mapped memory")

    def uva(self, addr: int, length: int) -> memoryview:
        """Front-end virtual [addr, addr+length) as a view (ring addresses)."""
        for r in self.regions:
            off = addr - r.uva
            if 0 <= off and off + length <= r.size:
                return r.view[off:off + length]
        raise AddressError(f"front-end address {addr:#x}+{length} is outside the mapped memory")

"""A VirtioNet configured by a vhost-user front-end: the device side of the VhostUserBackend interface.

The request handler (transport) has decoded and checked each request; what is left here is what the device
owns: guest memory and the vrings. The server makes one per connection and hands it to the handler.
"""

from __future__ import annotations

import logging
import os

from . import native, net
from .memory import AddressError, GuestMemory
from .net import VirtioNet
from .protocol import MemoryRegion, VringAddr
from .vhost_backend import BackendError
from .vring import RingError

log = logging.getLogger(__name__)


def guard_memory(mem: GuestMemory, port: str) -> None:
    """Register the regions whose file is not sealed against shrinking with the SIGBUS guard of _datapath.c: a
    front-end that ftruncates its memory file then loses its port instead of killing vhea (memory_truncated).
    Without the native module there is no guard: logged, and a shrinking front-end can still kill vhea."""
    mod = native.MOD
    for r in mem.regions:
        if r.sealed:
            continue
        if mod is None or not hasattr(mod, "guard_add"):
            log.warning("port %s: guest memory is not sealed against shrinking and the native module (SIGBUS guard) "
                        "is not there: a front-end that truncates its memory file can kill vhea", port)
            return
        slot = mod.guard_add(r.map)
        mem.guards.append(slot)
        mem.on_close.append(lambda slot=slot: mod.guard_remove(slot))


def memory_truncated(mem: GuestMemory | None) -> bool:
    """Whether the front-end shrank a guarded region's file under its mapping (now zero pages of our own)."""
    mod = native.MOD
    return mem is not None and mod is not None and any(mod.guard_was_hit(slot) for slot in mem.guards)


def guard_hits() -> int:
    """SIGBUS hits in guarded guest memory so far (0 without the native module): cheap, for every loop turn."""
    mod = native.MOD
    return mod.guard_hits() if mod is not None and hasattr(mod, "guard_hits") else 0


class NetBackend(VirtioNet):
    """VirtioNet plus the vhost-user configuration requests; `name` (the port's) is for the log."""

    def __init__(self, queue_pairs: int, name: str = "") -> None:
        super().__init__(queue_pairs)
        self.name = name

    @property
    def queue_num(self) -> int:
        return self.queue_pairs

    @property
    def vring_count(self) -> int:
        return len(self.rings)

    def offered_features(self) -> int:
        return net.offered_features(self.queue_pairs)

    def set_mem_table(self, regions: tuple[MemoryRegion, ...], fds: list[int]) -> None:
        try:
            mem = GuestMemory.map(regions, fds)
        except AddressError as e:
            raise BackendError(str(e)) from e
        guard_memory(mem, self.name)
        old = self.mem
        for r in self.rings:
            r.unmap()
        self.mem = mem
        if old is not None:
            old.close()
        for r in self.rings:
            if r.addr is not None:
                try:
                    r.map(mem)
                except RingError as e:
                    r.stop(str(e))
                    log.warning("port %s: ring %d stopped: %s", self.name, r.index, e)

    def set_vring_num(self, index: int, num: int) -> None:
        """A started ring is not resized (the spec stops a ring with GET_VRING_BASE before it is reconfigured);
        a stopped ring whose addresses were set is re-mapped for its new size, or left unmapped until the next
        SET_VRING_ADDR: its views never disagree with `num`."""
        ring = self.rings[index]
        old = ring.num
        try:
            ring.set_num(num)
        except RingError as e:
            raise BackendError(str(e)) from e
        if ring.started and old != num:
            ring.num = old
            raise BackendError(f"SET_VRING_NUM {num} on started ring {index} (size {old})")
        if ring.mapped and self.mem is not None:
            try:
                ring.map(self.mem)
            except RingError as e:
                ring.unmap()  # not ready until SET_VRING_ADDR maps it again
                log.warning("port %s: ring %d unmapped after SET_VRING_NUM %d: %s", self.name, index, num, e)

    def set_vring_addr(self, addr: VringAddr) -> None:
        ring = self.rings[addr.index]
        assert self.mem is not None  # the handler checks that a memory table came first
        ring.addr = addr
        ring.error = None
        try:
            ring.map(self.mem)
        except RingError as e:
            raise BackendError(str(e)) from e
        base = ring.last_avail_idx
        ring.sync_used_idx()
        if ring.used_idx != 0 or base != 0:  # a front-end that reconnects (QEMU reconnect=1) or a ring restarted
            log.info("port %s: ring %d resumes at used idx %d (SET_VRING_BASE gave %d)", self.name, ring.index,
                     ring.used_idx, base)

    def set_vring_base(self, index: int, base: int) -> None:
        ring = self.rings[index]
        ring.last_avail_idx = base
        ring.used_idx = base
        ring.signalled_used_valid = False

    def get_vring_base(self, index: int) -> int:
        ring = self.rings[index]
        base = ring.last_avail_idx
        ring.started = False
        if ring.kick_fd is not None:
            os.close(ring.kick_fd)
            ring.kick_fd = None
        ring.error = None
        return base

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        ring = self.rings[index]
        if ring.kick_fd is not None:
            os.close(ring.kick_fd)
        ring.kick_fd = fd
        ring.started = True

    def set_vring_call(self, index: int, fd: int | None) -> None:
        ring = self.rings[index]
        if ring.call_fd is not None:
            os.close(ring.call_fd)
        ring.call_fd = fd

    def set_vring_err(self, index: int, fd: int | None) -> None:
        ring = self.rings[index]
        if ring.err_fd is not None:
            os.close(ring.err_fd)
        ring.err_fd = fd

    def set_vring_enable(self, index: int, enabled: bool) -> None:
        self.rings[index].enabled = enabled

    def reset(self) -> None:
        for r in self.rings:
            r.reset()
        if self.mem is not None:
            self.mem.close()
            self.mem = None

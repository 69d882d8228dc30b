"""What the vhost-user request handler needs from a device: the VhostUserBackend interface.

Modelled on rust-vmm's VhostUserBackend / VhostUserBackendReqHandler: the handler (transport) decodes and
checks requests and keeps the session state; the device behind this interface owns guest memory and the
vrings. The transport never imports the device: the server passes an implementation in (vhea.net_backend).
"""

from __future__ import annotations

from typing import Protocol

from .protocol import MemoryRegion, VringAddr


class BackendError(Exception):
    """The device refused a request (a bad ring size, an address outside guest memory, ...): the handler turns it
    into a ProtocolError, which closes the connection."""


class VhostUserBackend(Protocol):
    """A vhost-user device. Ring indices reach it checked (0 <= index < vring_count), payloads decoded."""

    @property
    def queue_num(self) -> int:
        """The answer to GET_QUEUE_NUM (virtio-net: queue pairs); above 1 the MQ protocol feature is offered."""
        ...

    @property
    def vring_count(self) -> int:
        """How many vrings the device has."""
        ...

    def offered_features(self) -> int:
        """The virtio feature bits the device offers (GET_FEATURES)."""
        ...

    def set_features(self, features: int) -> None:
        """The features the front-end acked (a subset of offered_features(); 0 after RESET_OWNER)."""
        ...

    def set_mem_table(self, regions: tuple[MemoryRegion, ...], fds: list[int]) -> None:
        """Map the regions (one fd each; the fds are consumed) and remap configured rings onto them. BackendError
        when the table cannot be mapped (then the old memory stays)."""
        ...

    def set_vring_num(self, index: int, num: int) -> None:
        """The ring's size; BackendError when the size is not valid."""
        ...

    def set_vring_addr(self, addr: VringAddr) -> None:
        """The ring's addresses (front-end virtual); the ring resumes from the used index it holds. BackendError
        when they are not inside guest memory or not aligned."""
        ...

    def set_vring_base(self, index: int, base: int) -> None:
        """The next avail index to read (16 bits)."""
        ...

    def get_vring_base(self, index: int) -> int:
        """Stop the ring (its kick fd is closed) and return the next avail index it would have read."""
        ...

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        """The kick eventfd (taken over; None: polled); the ring starts."""
        ...

    def set_vring_call(self, index: int, fd: int | None) -> None:
        """The call eventfd (taken over; None: no calls)."""
        ...

    def set_vring_err(self, index: int, fd: int | None) -> None:
        """The error eventfd (taken over; None: none)."""
        ...

    def set_vring_enable(self, index: int, enabled: bool) -> None:
        """Enable or disable the ring."""
        ...

    def reset(self) -> None:
        """The session ends (disconnect, RESET_OWNER): rings back to new, their fds closed, memory unmapped."""
        ...

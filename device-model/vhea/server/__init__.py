"""The vhost-user back-end's server: the event loop and its ports (see loop.py for how it is put together)."""

from .loop import Server
from .port import Port

__all__ = ["Port", "Server"]

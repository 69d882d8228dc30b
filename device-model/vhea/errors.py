"""The errors and limits every layer of vhea shares; the lowest module, so that it imports nothing of vhea.

A setting refused by the device model is a ConfigError (the control socket answers it as {"error": ...}); a
mistake on the command line is a UsageError (one line, exit code 2). The port-name rule and the socket path
limit are checked both by `vhea serve` and by the control command port-add, so they live here once.
"""

from __future__ import annotations

import re


class ConfigError(ValueError):
    """A setting that the port cannot take; the message says why."""


class UsageError(Exception):
    """A mistake in the command line or environment, reported as one line and exit code 2."""


#: a port name: it becomes <socket dir>/<name>.sock, and the control socket takes the name "control"
PORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
RESERVED_PORT_NAME = "control"
#: what a user is told when a port name breaks the rule
PORT_NAME_RULE = "use 1-32 letters, digits, '-' or '_' (not 'control')"
#: sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


def is_port_name(name: object) -> bool:
    """True for a name that may be a port: PORT_NAME and not the control socket's."""
    return isinstance(name, str) and PORT_NAME.match(name) is not None and name != RESERVED_PORT_NAME

"""The limits every layer of vhea shares (vhea.errors): the port-name rule both `vhea serve` and port-add use."""

from __future__ import annotations

import pytest

from vhea.errors import MAX_SOCKET_PATH, ConfigError, is_port_name


@pytest.mark.parametrize("name", ["a", "port-1", "B_2", "x" * 32, "0"])
def test_port_names_that_are_taken(name):
    assert is_port_name(name)


@pytest.mark.parametrize("name", ["", "-a", "_a", "x" * 33, "a.b", "a/b", "a b", "control", None, 3, ["a"]])
def test_port_names_that_are_refused(name):
    assert not is_port_name(name)


def test_config_error_is_a_value_error_and_the_socket_limit_is_sun_path():
    assert issubclass(ConfigError, ValueError)
    assert MAX_SOCKET_PATH == 108 - 1  # sun_path holds 108 bytes with the terminating NUL

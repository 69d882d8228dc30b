"""testbed.image.cmdline: the kernel command line contract with the guest init, and its input checks."""

from __future__ import annotations

import pytest
from testbed_image_helpers import fake_guest_image

from testbed.image.cmdline import kernel_cmdline


@pytest.fixture
def fake_image(tmp_path):
    return fake_guest_image(tmp_path)


def test_kernel_cmdline_contract(fake_image):
    line = kernel_cmdline(
        fake_image, "guest-1", [("52:54:00:FF:00:01", "10.0.2.15/24"), ("52:54:00:aa:00:01", "10.10.0.1/24")]
    )
    words = line.split()
    for required in ("console=ttyS0", "quiet", "root=/dev/vda", "rw"):
        assert required in words
    assert "isostack.hostname=guest-1" in words
    assert words[-2:] == [
        "isostack.ifaddr=52:54:00:ff:00:01,10.0.2.15/24",
        "isostack.ifaddr=52:54:00:aa:00:01,10.10.0.1/24",
    ]


def test_kernel_cmdline_without_interfaces(fake_image):
    assert "isostack.ifaddr" not in kernel_cmdline(fake_image, "g", [])


@pytest.mark.parametrize(
    ("hostname", "ifaddrs", "message"),
    [
        ("bad_name", [], "invalid guest hostname 'bad_name'"),
        ("-lead", [], "invalid guest hostname"),
        ("a" * 64, [], "invalid guest hostname"),
        ("two words", [], "invalid guest hostname"),
        ("g", [("52:54:00:ff:00", "10.0.0.1/24")], "invalid MAC address '52:54:00:ff:00'"),
        ("g", [("52-54-00-ff-00-01", "10.0.0.1/24")], "invalid MAC address"),
        ("g", [("01:00:5e:00:00:01", "10.0.0.1/24")], "multicast bit"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.1")], r"expected <ip>/<prefix>"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.300/24")], "invalid interface address"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.1/33")], "invalid interface address"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.0/24")], "network or broadcast"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.255/24")], "network or broadcast"),
        ("g", [("52:54:00:ff:00:01", "10.0.0.1/24"), ("52:54:00:FF:00:01", "10.0.1.1/24")], "given twice"),
    ],
)
def test_kernel_cmdline_rejects_bad_input(fake_image, hostname, ifaddrs, message):
    with pytest.raises(ValueError, match=message):
        kernel_cmdline(fake_image, hostname, ifaddrs)


def test_point_to_point_prefix_allows_both_addresses(fake_image):
    line = kernel_cmdline(fake_image, "g", [("52:54:00:00:00:02", "10.0.0.0/31")])
    assert line.endswith("isostack.ifaddr=52:54:00:00:00:02,10.0.0.0/31")


def test_kernel_cmdline_extra_parameters(fake_image):
    line = kernel_cmdline(fake_image, "g", [], extra=["isolcpus=1", "nohz_full=1", "irqaffinity=0"])
    assert line.endswith("isolcpus=1 nohz_full=1 irqaffinity=0")
    assert line.index("isostack.hostname=g") < line.index("isolcpus=1")


@pytest.mark.parametrize(
    ("param", "message"),
    [("a b", "one word"), ("", "one word"), ('x="y"', "one word"), ("root=/dev/sda", "override"),
     ("isostack.hostname=x", "override"), ("console=tty0", "override")],
)  # fmt: skip
def test_kernel_cmdline_rejects_bad_extra_parameters(fake_image, param, message):
    with pytest.raises(ValueError, match=message):
        kernel_cmdline(fake_image, "g", [], extra=[param])


def test_kernel_cmdline_routes(fake_image):
    line = kernel_cmdline(fake_image, "iso-a", [("52:54:00:ff:00:01", "10.0.2.15/24")],
                          routes=[("10.254.0.0/16", "10.0.2.2")])
    assert line.split()[-1] == "isostack.route=10.254.0.0/16,10.0.2.2"
    with pytest.raises(ValueError, match="invalid route"):
        kernel_cmdline(fake_image, "iso-a", [], routes=[("10.254.0.1/16", "10.0.2.2")])  # host bits set
    with pytest.raises(ValueError, match="invalid route"):
        kernel_cmdline(fake_image, "iso-a", [], routes=[("10.254.0.0/16", "10.0.2.2 quiet")])

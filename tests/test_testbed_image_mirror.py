"""testbed.image.mirror: the Debian mirror from apt configuration texts (deb822 and one-line formats)."""

from __future__ import annotations

import pytest

from testbed.image import mirror
from testbed.image.artifacts import ImageBuildError
from testbed.image.mirror import find_debian_mirror

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main contrib
"""


def test_mirror_from_deb822_skips_security_src_and_disabled():
    assert find_debian_mirror("bookworm", [("debian.sources", DEB822)]) == "http://mirror.example.org/debian"


def test_mirror_from_one_line_sources_list():
    text = """\
# deb http://commented.example.org/debian bookworm main
deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://one.example.org/debian bookworm main non-free
deb http://two.example.org/debian bookworm main
"""
    assert find_debian_mirror("bookworm", [("sources.list", text)]) == "https://one.example.org/debian"


def test_mirror_needs_suite_and_main_component():
    text = "deb http://a.example.org/debian trixie main\ndeb http://b.example.org/debian bookworm contrib\n"
    with pytest.raises(ImageBuildError, match="no Debian mirror for 'bookworm main'"):
        find_debian_mirror("bookworm", [("sources.list", text)])


def test_mirror_from_this_machines_apt_config_is_http():
    try:
        uri = find_debian_mirror("bookworm", mirror.system_apt_sources())
    except ImageBuildError:
        pytest.skip("this machine has no bookworm mirror configured")
    assert uri.startswith(("http://", "https://"))

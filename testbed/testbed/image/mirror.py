"""The Debian mirror a build downloads from, taken from the host's own apt configuration.

The testbed ships no mirror list: the host's apt sources (deb822 or one-line format) already name one that
works from here.
"""

from __future__ import annotations

import re
from pathlib import Path

from testbed.image.artifacts import ImageBuildError


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

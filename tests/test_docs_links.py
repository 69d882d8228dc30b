"""Relative links in README.md and docs/*.md resolve: the file exists inside the repository, and a #heading
exists in the linked Markdown file (GitHub's anchor rules). A moved or renamed document, or a heading that
changed, fails here instead of leaving the manual with dead links."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and [text](target "title"); images too. Not reference-style links (none are used).
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their 1-based numbers."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]*>", "", heading)  # inline HTML, e.g. <!-- comments -->
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _, -, spaces (unicode letters too)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _number, line in _prose_lines(path.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    found = []
    for number, line in _prose_lines(text):
        prose = re.sub(r"`[^`]*`", "", line)  # a link inside an inline code span is an example, not a link
        found += [(number, m.group(1)) for m in LINK.finditer(prose)]
    return found


def broken_links(path: Path) -> list[str]:
    """Why each relative link of `path` does not resolve (empty: all fine)."""
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: {dest.relative_to(ROOT)} does not exist")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_the_documents_exist():
    names = {p.name for p in DOCS}
    assert "README.md" in names
    assert len(DOCS) > 1, "the manual in docs/ is missing"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    assert broken_links(path) == []


def test_readme_links_every_document_in_docs():
    linked = {(ROOT / t.partition("#")[0]).resolve() for _n, t in links(ROOT / "README.md") if not EXTERNAL.match(t)}
    missing = [p.name for p in DOCS[1:] if p.resolve() not in linked]
    assert missing == [], f"README.md does not link {missing}"


def test_the_checker_finds_broken_links(tmp_path, monkeypatch):
    """The checker itself: a missing file, a missing anchor and a path outside the repository are reported;
    good links, external links and links inside code are not."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(
        "# Title\n\n## Flow control (pause)\n\n## Flow control (pause)\n\n### Interrupted `up`\n"
    )
    (docs / "b.md").write_text(
        "[ok](a.md) [ok](a.md#flow-control-pause) [ok](a.md#flow-control-pause-1) [ok](#here)\n"
        "[ok](a.md#interrupted-up)\n"
        "[web](https://example.com/x.md) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "## Here\n"
        "[bad](missing.md) [bad](a.md#no-such) [bad](../../outside.md)\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = broken_links(docs / "b.md")
    assert len(problems) == 3, problems
    assert "missing.md does not exist" in problems[0]
    assert "no heading with anchor #no-such" in problems[1]
    assert "outside the repository" in problems[2]

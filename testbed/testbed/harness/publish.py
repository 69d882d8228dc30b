"""A run's report files: report.md (the tables and notes, the figures linked), the figures (figures.draw) and
report.html, one page that holds everything (the figures embedded as base64 PNG) so it can be mailed or kept
as a CI artifact. Written at the end of `fab run-benchmark` and again by `fab report RUN`.

The page is report.md rendered by markdown-it with raw HTML and images off, so a test or playbook name cannot
inject markup or pull anything from elsewhere; the only images are the figures added here.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from testbed.harness import figures, report

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; display: block; overflow-x: auto; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; white-space: nowrap; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
li { font-size: 0.9em; }
"""


@dataclass(frozen=True)
class Published:
    report_md: Path
    report_html: Path
    figures: list[Path]  # PNG and SVG
    figure_error: str | None  # why there are no figures (matplotlib missing), or None


def _split(md: str) -> tuple[str, str]:
    """report.md around the place of the figures: after the main table, before the first section."""
    head, sep, tail = md.partition("\n## ")
    return head, (sep + tail if sep else "")


def _figures_md(pngs: list[Path], run_dir: Path, error: str | None) -> str:
    lines = ["", "## Figures", ""]
    if error:
        lines.append(f"Not drawn: {error}")
    elif not pngs:
        lines.append("None: the run has no successful case to draw.")
    for p in pngs:
        rel = p.relative_to(run_dir).as_posix()
        lines += [f"![{p.stem}]({rel})", "", f"{rel} (and {Path(rel).with_suffix('.svg').as_posix()})", ""]
    return "\n".join(lines) + "\n"


def _figures_html(pngs: list[Path], run_dir: Path, error: str | None) -> str:
    out = ["<h2>Figures</h2>"]
    if error:
        out.append(f"<p>Not drawn: {html.escape(error)}</p>")
    elif not pngs:
        out.append("<p>None: the run has no successful case to draw.</p>")
    for p in pngs:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        rel = html.escape(p.relative_to(run_dir).as_posix())
        out.append(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{rel} (and .svg)</figcaption></figure>")
    return "\n".join(out) + "\n"


def _render(md: str) -> str:
    from markdown_it import MarkdownIt  # rich's own dependency; only needed when writing the page

    return MarkdownIt("commonmark", {"html": False}).enable("table").disable("image").render(md)


def page(run: dict, md: str, pngs: list[Path], run_dir: Path, error: str | None = None) -> str:
    """The self-contained HTML page of a run: report.md's content with the figures embedded."""
    head, tail = _split(md)
    title = html.escape(f"{(run.get('playbook') or {}).get('name', '?')} - run {run.get('run_id', '?')}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{_render(head)}{_figures_html(pngs, run_dir, error)}"
            f"{_render(tail)}</body>\n</html>\n")


def write(run: dict, run_dir: Path) -> Published:
    """Draw the figures and write report.md and report.html into run_dir (replacing what was there)."""
    run_dir = Path(run_dir)
    error = None
    try:
        drawn = figures.draw(run, run_dir)
    except figures.FiguresError as e:
        drawn, error = [], str(e)
    pngs = [p for p in drawn if p.suffix == ".png"]
    md = report.markdown(run)
    head, tail = _split(md)
    md_path, html_path = run_dir / REPORT_MD, run_dir / REPORT_HTML
    md_path.write_text(head + "\n" + _figures_md(pngs, run_dir, error) + tail)
    html_path.write_text(page(run, md, pngs, run_dir, error))
    return Published(md_path, html_path, drawn, error)


def outputs(run_dir: Path) -> list[str]:
    """What a reader opens, one line each: the page, report.md and each figure (PNG; the SVG lies beside it)."""
    run_dir = Path(run_dir)
    out = [f"{label}: {run_dir / name}" for label, name in (("report", REPORT_HTML), ("report.md", REPORT_MD))
           if (run_dir / name).is_file()]
    out += [f"figure: {p}" for p in sorted((run_dir / figures.FIGURES_DIR).glob("*.png"))]
    return out

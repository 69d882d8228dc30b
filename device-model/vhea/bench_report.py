"""The result of `vhea bench`: one Row per (case, datapath, frame size), and the ways it is shown: a table
(rich on a terminal, fixed-width text in a log), JSON, and the medians of repeated runs.

"per vhea core" = frames/s divided by the CPU share vhea used in the window (user + system): what one fully
busy vhea core would forward if the rate scaled (the front-ends, not vhea, limit several rows). The anchor's
vhost PMD busy-polls one core, so "per core vs anchor" compares per-core rates. "taken from a per vhea core":
the frames/s vhea took from port a's tx ring (delivered to b or dropped there for want of buffers) per vhea
core; the anchor's vhost PMD counts what it takes from the virtio-user tx ring, so this is its like.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class Row:
    case: str  # anchor | vhea+dpdk | vhea+python
    frame: str  # "64", "1518", "64K TSO", ...
    frame_bytes: int  # bytes per received frame (for Gb/s)
    fps: float
    gbps: float
    ratio: float | None = None  # to the anchor at the same frame size
    note: str = ""
    vhea_cpu: float | None = None  # cores the vhea process used in the window (user + system time / wall time)
    fps_per_core: float | None = None  # fps / vhea_cpu: what one fully busy vhea core would forward
    datapath: str | None = None  # vhea's datapath (native | python); None for the anchor
    vhea_frames: int | None = None  # frames vhea counted into port b in the measuring window (vhea stats)
    taken_fps: float | None = None  # frames/s vhea took from port a's tx ring in the window (delivered or dropped)
    taken_per_core: float | None = None  # taken_fps / vhea_cpu (the anchor's vhost PMD also counts what it takes)
    verified: int | None = None  # frames the Python receiver compared byte for byte with what was sent (sampled)
    bad: int | None = None  # of those, frames that differed
    core_ratio: float | None = None  # fps_per_core / anchor fps (the vhost PMD uses one busy-polling core)


def make_row(case: str, frame: str, nbytes: int, fps: float, cpu: float | None, anchor: float | None,
             note: str = "", datapath: str | None = None) -> Row:
    """A row with its Gb/s, ratio to the anchor's frames/s and per-core figures worked out."""
    per_core = fps / cpu if cpu else None
    return Row(case, frame, nbytes, fps, fps * nbytes * 8 / 1e9, fps / anchor if anchor else None, note, cpu,
               per_core, datapath=datapath, core_ratio=per_core / anchor if per_core and anchor else None)


def set_taken(row: Row, fps: float) -> None:
    """Record the frames/s vhea took from port a's tx ring, and that per vhea core."""
    row.taken_fps = fps
    row.taken_per_core = fps / row.vhea_cpu if row.vhea_cpu else None


def _order(r: Row) -> tuple:
    """Table order: the anchor, then each (front-end, frame) with its datapaths side by side."""
    kinds = ("anchor (DPDK vhost PMD)", "vhea datapath alone (in-process)", "vhea + DPDK virtio-user",
             "vhea + Python front-end")
    frame = int(r.frame) if r.frame.isdigit() else 1 << 20
    return (kinds.index(r.case) if r.case in kinds else 9, r.case, frame, r.frame, r.datapath or "")


def print_table(rows: list[Row], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"vhea bench: port a -> port b, {seconds:g} s per figure, counted at the receiver")
    for col, just in (("front-end / back-end", "left"), ("datapath", "left"), ("frame", "right"),
                      ("frames/s", "right"), ("Gb/s", "right"), ("vs anchor", "right"), ("vhea CPU", "right"),
                      ("frames/s per vhea core", "right"), ("Gb/s per vhea core", "right"),
                      ("per core vs anchor", "right"), ("taken from a per vhea core", "right"), ("note", "left")):
        t.add_column(col, justify=just)
    for r in sorted(rows, key=_order):
        per_core = r.fps_per_core
        t.add_row(r.case, r.datapath or "-", r.frame, f"{r.fps:,.0f}", f"{r.gbps:.2f}",
                  "-" if r.ratio is None else f"{r.ratio:.1%}",
                  "-" if r.vhea_cpu is None else f"{r.vhea_cpu:.0%}",
                  "-" if per_core is None else f"{per_core:,.0f}",
                  "-" if per_core is None else f"{per_core * r.frame_bytes * 8 / 1e9:.2f}",
                  "-" if r.core_ratio is None else f"{r.core_ratio:.0%}",
                  "-" if r.taken_per_core is None else f"{r.taken_per_core:,.0f}", r.note)
    console = Console()
    if not console.is_terminal:  # a log or a README: plain columns, nothing folded or cut
        print(plain_table(rows, seconds))
        return
    console.print(t)


def plain_table(rows: list[Row], seconds: float) -> str:
    """The table as fixed-width text, one line per row, the note last and whole."""
    def f(v, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    head = ("front-end / back-end", "datapath", "frame", "frames/s", "Gb/s", "vs anchor", "vhea CPU",
            "per vhea core", "Gb/s/core", "core vs anchor", "taken/core", "note")
    lines = []
    for r in sorted(rows, key=_order):
        pc = r.fps_per_core
        lines.append((r.case, r.datapath or "-", r.frame.replace("64K TSO -> TSO peer", "64K TSO whole")
                      .replace("64K TSO -> plain peer", "64K TSO->segs"), f"{r.fps:,.0f}", f"{r.gbps:.2f}",
                      f(r.ratio, "{:.1%}"), f(r.vhea_cpu, "{:.0%}"), f(pc, "{:,.0f}"),
                      f(pc and pc * r.frame_bytes * 8 / 1e9, "{:.2f}"), f(r.core_ratio, "{:.0%}"),
                      f(r.taken_per_core, "{:,.0f}"), r.note))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    out = [f"vhea bench: port a -> port b, {seconds:g} s per figure, counted at the receiver"]
    for x in [head, *lines]:
        cells = [x[0].ljust(widths[0]), x[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(x[2:-1], widths[2:],
                                                                                           strict=True)]
        out.append("  ".join(cells) + "  " + x[-1])
    return "\n".join(out)


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """One row per (case, datapath, frame): the median frames/s and CPU share over repeated runs (a shared,
    noisy machine), ratios recomputed against the median anchor; counters summed; note says how many runs."""
    import statistics

    groups: dict[tuple, list[Row]] = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r.case, r.datapath, r.frame), []).append(r)
    failed = {}
    for k, g in groups.items():  # a run that saw no traffic at all (testpmd gave up) is a failure, not a figure
        ok = [r for r in g if r.fps > 0]
        failed[k] = len(g) - len(ok)
        groups[k] = ok or g
    anchor = {k[2]: statistics.median(r.fps for r in g) for k, g in groups.items() if k[0].startswith("anchor")}
    out = []
    for (case, dp, frame), g in groups.items():
        fps = statistics.median(r.fps for r in g)
        cpus = [r.vhea_cpu for r in g if r.vhea_cpu is not None]
        cpu = statistics.median(cpus) if cpus else None
        a = anchor.get(frame) if any(r.ratio is not None for r in g) or case.startswith("anchor") else None
        row = make_row(case, frame, g[0].frame_bytes, fps, cpu, a, g[0].note, dp)
        if cpus:  # per core: the median of the runs' own figures (fps and CPU share move together)
            row.fps_per_core = statistics.median(r.fps_per_core for r in g if r.fps_per_core)
            row.core_ratio = row.fps_per_core / a if a else None
        taken = [r.taken_per_core for r in g if r.taken_per_core]
        if taken:
            row.taken_fps = statistics.median(r.taken_fps for r in g if r.taken_fps is not None)
            row.taken_per_core = statistics.median(taken)
        for name in ("vhea_frames", "verified", "bad"):
            vals = [getattr(r, name) for r in g if getattr(r, name) is not None]
            setattr(row, name, sum(vals) if vals else None)
        if len(runs) > 1:
            spread = f"{min(r.fps for r in g):,.0f}..{max(r.fps for r in g):,.0f}"
            row.note = (row.note + "; " if row.note else "") + f"median of {len(g)} runs ({spread})"
            if failed[(case, dp, frame)]:
                row.note += f"; {failed[(case, dp, frame)]} run(s) saw no traffic"
        out.append(row)
    return out


def to_json(rows: list[Row], seconds: float) -> str:
    return json.dumps({"seconds": seconds, "rows": [asdict(r) for r in rows]})

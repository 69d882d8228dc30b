"""The comparison figure: per metric a panel, per case the change NEW/BASE in % with its bootstrap interval,
coloured by verdict, over the ±threshold band. compare.png and compare.svg next to compare.md.

matplotlib is imported here only (Agg backend: no display on a CI runner), so `fab compare` without a
figure, and everything else, does not pay for it.
"""

from __future__ import annotations

from pathlib import Path

from testbed.harness.compare import (
    FAILED_IN_NEW,
    IMPROVEMENT,
    LOAD_DIFFERS,
    METRICS,
    NOT_ENOUGH,
    REGRESSION,
    UNCHANGED,
    UNSURE,
    Comparison,
    case_label,
)

COLOURS = {REGRESSION: "#c0392b", IMPROVEMENT: "#27ae60", UNSURE: "#e69f00", UNCHANGED: "#555555",
           NOT_ENOUGH: "#aaaaaa", FAILED_IN_NEW: "#c0392b",
           LOAD_DIFFERS: "#9467bd"}
STEM = "compare"


def draw(c: Comparison, out_dir: Path, stem: str = STEM) -> list[Path]:
    """Write <stem>.png and <stem>.svg into out_dir; returns their paths ([] when nothing was compared)."""
    if not c.changes:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(ch.metric.name == m.name for ch in c.changes)]
    keys = list(dict.fromkeys(ch.key for ch in c.changes))
    labels = [case_label(k) for k in keys]
    height = max(2.5, 0.45 * len(keys) + 1.5)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 2.5, height), sharey=True,
                             squeeze=False)
    t = c.settings.threshold * 100
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.axvspan(-t, t, color="#eeeeee", zorder=0)
        ax.axvline(0, color="#888888", linewidth=0.8, zorder=1)
        for ch in (ch for ch in c.changes if ch.metric.name == metric.name):
            y = keys.index(ch.key)
            x = (ch.change - 1) * 100
            colour = COLOURS.get(ch.verdict, "#555555")
            if ch.interval is not None:
                lo, hi = (ch.interval.low - 1) * 100, (ch.interval.high - 1) * 100
                ax.errorbar(x, y, xerr=[[max(0.0, x - lo)], [max(0.0, hi - x)]], fmt="o", color=colour,
                            capsize=3, zorder=2)
            else:
                ax.plot(x, y, "o", color=colour, zorder=2)
        better = "higher" if metric.higher_is_better else "lower"
        ax.set_title(f"{metric.label}\n({better} is better)", fontsize=9)
        ax.set_xlabel("change NEW/BASE (%)")
        ax.grid(axis="x", linestyle=":", linewidth=0.5)
    axes[0][0].set_yticks(range(len(keys)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=COLOURS[v], label=v)
               for v in (REGRESSION, IMPROVEMENT, UNSURE, LOAD_DIFFERS, UNCHANGED, NOT_ENOUGH)
               if any(ch.verdict == v for ch in c.changes)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"BASE {c.base_id} → NEW {c.new_id}  (grey band: ±{t:g} %, bars: "
                 f"{c.settings.confidence * 100:g} % interval)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths

"""The ablation's figure: each variant's mean with its CI and the seeds' values, per metric, and
the mean log-NC1 curve of each variant over the epochs."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from dgkd.ablate.result import AblationResult
from dgkd.ablate.summary import METRICS
from dgkd.ablate.variants import REFERENCE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PLOT_FILE", "plot_png"]

PLOT_FILE = "ablation.png"


def plot_png(result: AblationResult) -> bytes:
    """Each variant's mean with its 95% CI (two-level with several teachers) and every run's
    value, one panel per metric."""
    from matplotlib.figure import Figure

    from dgkd.stats import CONFIDENCE

    rows = result.summary
    names = [r["variant"] for r in rows]
    # One panel per metric and one for the NC1 curves, in a near-square grid (3 x 3 for 8 + 1).
    cols = math.ceil(math.sqrt(len(METRICS) + 1))
    grid = (math.ceil((len(METRICS) + 1) / cols), cols)
    fig = Figure(figsize=(4.3 * cols, 1.2 + 0.45 * len(names) * grid[0]), layout="constrained")
    axes = fig.subplots(*grid).ravel()
    for j, (ax, spec) in enumerate(zip(axes, METRICS.values(), strict=False)):
        scale = 100.0 if spec.percent else 1.0
        m = spec.name
        for i, row in enumerate(rows):
            y = len(rows) - 1 - i
            seeds = [c.value(m) * scale for c in result.cells if c.variant == row["variant"]]
            ax.plot(seeds, [y - 0.2] * len(seeds), "o", color="0.6", ms=3, zorder=1)
            mean = row[f"{m}_mean"] * scale
            if math.isfinite(mean):
                low, high = row[f"{m}_ci_low"] * scale, row[f"{m}_ci_high"] * scale
                err = [[mean - low], [high - mean]] if math.isfinite(low) else None
                color = "C3" if row["variant"] == REFERENCE else "C0"
                ax.errorbar([mean], [y], xerr=err, fmt="o", color=color, capsize=3, zorder=2)
            if row["diverged"]:
                ax.annotate(
                    f"{row['diverged']} diverged",
                    (1.0, y),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color="C1",
                )
        ref = rows[0][f"{m}_mean"] * scale
        if math.isfinite(ref):
            ax.axvline(ref, color="C3", ls="--", lw=0.8, zorder=0)
        arrow = "↑" if spec.higher_is_better else "↓"
        ax.set_title(f"{spec.label}{spec.unit} {arrow}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(names)), list(reversed(names)) if j % cols == 0 else [])
        ax.set_ylim(-0.7, len(names) - 0.3)
    _nc1_curves(axes[len(METRICS)], result)
    for ax in axes[len(METRICS) + 1 :]:
        ax.set_visible(False)
    over = f"{len(result.seeds)} seeds"
    if len(result.teacher_seeds) > 1:
        over = f"{len(result.teacher_seeds)} teachers x {over} (two-level)"
    fig.suptitle(
        f"ablation {result.name}: mean and {CONFIDENCE:.0%} bootstrap CI over "
        f"{over} (grey: single runs; dashed: full)",
        fontsize=11,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _nc1_curves(ax: Axes, result: AblationResult) -> None:
    """Each variant's mean over runs of ln(train NC1) at every epoch (finished cells only)."""
    from matplotlib.ticker import MaxNLocator

    for i, variant in enumerate(result.variants):
        curves = [
            [
                math.log(v) if v > 0 else math.nan
                for v in (r.get("train_nc1", math.nan) for r in c.history)
            ]
            for c in result.cells
            if c.variant == variant and c.status == "ok" and c.history
        ]
        if not curves:
            continue
        epochs = min(len(c) for c in curves)
        mean = [sum(c[e] for c in curves) / len(curves) for e in range(epochs)]
        other = f"C{(0, 1, 2, 4, 5, 6, 7, 8, 9)[i % 9]}"  # C3 (red) is full's
        style = {"color": "C3", "lw": 2.0} if variant == REFERENCE else {"color": other}
        ax.plot(range(1, epochs + 1), mean, label=variant, **style)
    ax.set_title("mean ln(train NC1) by epoch ↓", fontsize=10)
    ax.set_xlabel("epoch", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)

"""suite.png: a forest plot per variant, one row per setup and one for the aggregate."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from dgkd.ablate.variants import REFERENCE
from dgkd.metricspec import METRICS
from dgkd.suite.report import HEADLINE
from dgkd.suite.stats import ALL

if TYPE_CHECKING:
    from dgkd.suite.result import SuiteResult

__all__ = ["PLOT_FILE", "forest_png"]

PLOT_FILE = "suite.png"
_COLORS = {"better": "C2", "worse": "C3"}


def forest_png(result: SuiteResult, metric: str = HEADLINE) -> bytes:
    """Each non-reference variant's paired difference to ``full`` with its 95% CI, per setup
    (circles) and across setups (a diamond); green / red where the verdict is better / worse."""
    from matplotlib.figure import Figure

    spec = METRICS[metric]
    scale = 100.0 if spec.percent else 1.0
    rows = [r for r in result.rows if r["metric"] == metric and r["variant"] != REFERENCE]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    setups = list(dict.fromkeys(r["setup"] for r in rows if r["setup"] != ALL))
    labels = [*setups, f"{ALL} ({len(setups)} setups)"]
    cols = min(len(variants), 4) or 1
    grid = (math.ceil(len(variants) / cols) or 1, cols)
    fig = Figure(figsize=(3.6 * cols, 0.9 + 0.32 * len(labels) * grid[0]), layout="constrained")
    axes = fig.subplots(*grid, squeeze=False).ravel()
    for j, (ax, variant) in enumerate(zip(axes, variants, strict=False)):
        by = {r["setup"]: r for r in rows if r["variant"] == variant}
        for i, setup in enumerate([*setups, ALL]):
            r = by[setup]
            y = len(labels) - 1 - i
            if not math.isfinite(r["delta"]):
                continue
            mid = r["delta"] * scale
            err = None
            if math.isfinite(r["ci_low"]):
                err = [[mid - r["ci_low"] * scale], [r["ci_high"] * scale - mid]]
            color = _COLORS.get(r["verdict"], "0.3")
            marker = "D" if setup == ALL else "o"
            ax.errorbar([mid], [y], xerr=err, fmt=marker, color=color, capsize=3, ms=6)
        ax.axvline(0, color="0.5", ls="--", lw=0.8, zorder=0)
        ax.axhline(0.5, color="0.8", lw=0.6, zorder=0)
        ax.set_yticks(range(len(labels)), list(reversed(labels)) if j % cols == 0 else [])
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_title(f"{variant} - full", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(variants) :]:
        ax.set_visible(False)
    unit = " (points)" if spec.percent else ""
    fig.suptitle(
        f"suite {result.suite.name}: {spec.label}{unit}, paired difference to full and 95% CI "
        "(diamond: across setups, three-level bootstrap; green/red: better/worse)",
        fontsize=10,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()

"""The summary: one row per variant with its statistics, each metric compared with ``full``.

The statistics come from :mod:`dgkd.stats`: bootstrap CIs, the paired t-test on seed pairs,
Holm's correction across the variants of one metric, and the probability of improvement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dgkd.ablate.cells import CellResult
from dgkd.ablate.variants import REFERENCE, VARIANTS

__all__ = ["METRICS", "MetricSpec", "summarize_cells"]


@dataclass(frozen=True)
class MetricSpec:
    """How a summarized metric reads: its label, direction and display scale."""

    name: str
    label: str
    higher_is_better: bool
    percent: bool  # shown x100 with differences in percentage points

    @property
    def unit(self) -> str:
        """The suffix of a heading: ``" (%)"`` for a percentage, else nothing."""
        return " (%)" if self.percent else ""

    @property
    def direction(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return "higher is better" if self.higher_is_better else "lower is better"


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("test_acc", "test accuracy", True, True),
        MetricSpec("val_acc", "validation accuracy", True, True),
        MetricSpec("test_agreement", "test agreement with the teacher", True, True),
        MetricSpec("test_kl_to_teacher", "test KL to the teacher", False, False),
        MetricSpec("test_ece", "test ECE", False, False),
        MetricSpec("train_nc1", "final train NC1", False, False),
        # mean over epochs of ln(train NC1): how fast classes collapse (dgkd.ablate.curves)
        MetricSpec("nc1_auc", "mean log train NC1 over epochs", False, False),
    )
}


def summarize_cells(cells: Sequence[CellResult], variants: Sequence[str]) -> list[dict[str, Any]]:
    """One row per variant: counts, then for each metric n/mean/std/CI, the paired
    difference to ``full`` with its CI, the paired t-test p (raw and Holm-corrected across the
    variants) and the probability of improvement over ``full``.

    Diverged cells count in ``diverged`` and are missing values in the statistics; a pair is
    used only when both its variant cell and its ``full`` cell finished.
    """
    from dgkd.stats import compare_paired, holm, summarize

    seeds = sorted({c.seed for c in cells})
    by = {(c.variant, c.seed): c for c in cells}

    def column(variant: str, metric: str) -> list[float]:
        return [by[(variant, s)].value(metric) if (variant, s) in by else math.nan for s in seeds]

    rows: list[dict[str, Any]] = []
    for v in variants:
        own = [by[(v, s)] for s in seeds if (v, s) in by]
        ok = [c for c in own if c.status == "ok"]
        ref_ok = {c.seed for c in cells if c.variant == REFERENCE and c.status == "ok"}
        rows.append(
            {
                "variant": v,
                "description": VARIANTS[v].doc,
                "n": len(ok),
                "diverged": sum(c.status == "diverged" for c in own),
                "n_pairs": sum(c.seed in ref_ok for c in ok),
            }
        )
    for metric, spec in METRICS.items():
        ref = column(REFERENCE, metric)
        for row in rows:
            values = column(row["variant"], metric)
            s = summarize(values)
            row.update(
                {
                    f"{metric}_mean": s.mean,
                    f"{metric}_std": s.std,
                    f"{metric}_ci_low": s.ci_low,
                    f"{metric}_ci_high": s.ci_high,
                }
            )
            if row["variant"] == REFERENCE:
                cmp = None
            else:
                cmp = compare_paired(values, ref, higher_is_better=spec.higher_is_better)
            row.update(
                {
                    f"{metric}_delta": cmp.delta if cmp else math.nan,
                    f"{metric}_delta_ci_low": cmp.delta_ci_low if cmp else math.nan,
                    f"{metric}_delta_ci_high": cmp.delta_ci_high if cmp else math.nan,
                    f"{metric}_p": cmp.p if cmp else math.nan,
                    f"{metric}_p_holm": math.nan,  # filled in below, across the variants
                    f"{metric}_p_improve": cmp.p_improve if cmp else math.nan,
                }
            )
        adjusted = holm([row[f"{metric}_p"] for row in rows])
        for row, p in zip(rows, adjusted, strict=True):
            row[f"{metric}_p_holm"] = p
    return rows

"""The summary: one row per variant with its statistics, each metric compared with ``full``.

The statistics come from :mod:`dgkd.stats`: bootstrap CIs, the paired t-test on seed pairs,
Holm's correction across the variants of one metric, and the probability of improvement. With
several teacher seeds the cells are grouped by teacher and :mod:`dgkd.nested`'s statistics treat
the teacher as a random factor (two-level bootstrap, the t-test on teacher-level means, the
variance components ``sd_teacher`` and ``sd_seed`` of each difference to ``full``); with one
teacher they are the one-level ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dgkd.ablate.cells import CellResult
from dgkd.ablate.variants import REFERENCE, VARIANTS
from dgkd.metricspec import ABLATION_METRICS, MetricSpec
from dgkd.metricspec import METRICS as METRIC_TABLE

__all__ = ["HEADLINE", "METRICS", "MetricSpec", "summarize_cells"]


# The summarized metrics, in table order, from the one metric table.
METRICS: dict[str, MetricSpec] = {name: METRIC_TABLE[name] for name in ABLATION_METRICS}

# The metric whose variance components summary.csv also names without a prefix.
HEADLINE = "test_acc"


def summarize_cells(cells: Sequence[CellResult], variants: Sequence[str]) -> list[dict[str, Any]]:
    """One row per variant: counts, then for each metric n/mean/std/CI, the paired
    difference to ``full`` with its CI, the paired t-test p (raw and Holm-corrected across the
    variants), the probability of improvement over ``full`` and the difference's variance
    components (``sd_teacher`` NaN with one teacher).

    Diverged cells count in ``diverged`` and are missing values in the statistics; a pair is
    used only when both its variant cell and its ``full`` cell finished.
    """
    from dgkd.nested import compare_grouped, summarize_grouped
    from dgkd.stats import holm, verdict

    seeds = sorted({c.seed for c in cells})
    teachers = sorted({c.teacher_seed for c in cells})
    by = {(c.variant, c.teacher_seed, c.seed): c for c in cells}

    def column(variant: str, metric: str) -> list[list[float]]:
        """The metric per teacher, aligned by seed (NaN where a cell is missing)."""
        return [
            [
                by[(variant, t, s)].value(metric) if (variant, t, s) in by else math.nan
                for s in seeds
            ]
            for t in teachers
        ]

    ref_ok = {
        (c.teacher_seed, c.seed) for c in cells if c.variant == REFERENCE and c.status == "ok"
    }
    rows: list[dict[str, Any]] = []
    teachers_of: dict[str, int] = {}
    for v in variants:
        own = [by[(v, t, s)] for t in teachers for s in seeds if (v, t, s) in by]
        ok = [c for c in own if c.status == "ok"]
        rows.append(
            {
                "variant": v,
                "description": VARIANTS[v].doc,
                "n": len(ok),
                "diverged": sum(c.status == "diverged" for c in own),
                "n_pairs": sum((c.teacher_seed, c.seed) in ref_ok for c in ok),
            }
        )
        teachers_of[v] = len({c.teacher_seed for c in ok})
    for metric, spec in METRICS.items():
        ref = column(REFERENCE, metric)
        for row in rows:
            values = column(row["variant"], metric)
            s = summarize_grouped(values)
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
                cmp = compare_grouped(values, ref, higher_is_better=spec.higher_is_better)
            row.update(
                {
                    f"{metric}_delta": cmp.delta if cmp else math.nan,
                    f"{metric}_delta_ci_low": cmp.delta_ci_low if cmp else math.nan,
                    f"{metric}_delta_ci_high": cmp.delta_ci_high if cmp else math.nan,
                    f"{metric}_p": cmp.p if cmp else math.nan,
                    f"{metric}_p_holm": math.nan,  # filled in below, across the variants
                    f"{metric}_p_improve": cmp.p_improve if cmp else math.nan,
                    f"{metric}_sd_teacher": cmp.sd_teacher if cmp else math.nan,
                    f"{metric}_sd_seed": cmp.sd_seed if cmp else math.nan,
                    # what an equivalence verdict reads (dgkd.nested.compare_grouped)
                    f"{metric}_equiv_low": cmp.equivalence_bounds[0] if cmp else math.nan,
                    f"{metric}_equiv_high": cmp.equivalence_bounds[1] if cmp else math.nan,
                }
            )
        adjusted = holm([row[f"{metric}_p"] for row in rows])
        for row, p in zip(rows, adjusted, strict=True):
            row[f"{metric}_p_holm"] = p
            row[f"{metric}_verdict"] = (
                ""
                if row["variant"] == REFERENCE
                else verdict(
                    row[f"{metric}_delta_ci_low"],
                    row[f"{metric}_delta_ci_high"],
                    p,
                    higher_is_better=spec.higher_is_better,
                    rope=spec.rope,
                    within=(row[f"{metric}_equiv_low"], row[f"{metric}_equiv_high"]),
                )
            )
    for row in rows:  # last, so the leading columns stay as they were with one teacher
        row["n_teachers"] = teachers_of[row["variant"]]
        row["sd_teacher"] = row[f"{HEADLINE}_sd_teacher"]
        row["sd_seed"] = row[f"{HEADLINE}_sd_seed"]
    return rows

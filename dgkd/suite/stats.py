"""A suite's statistics: each setup's difference to ``full`` and one aggregate across setups.

Values come nested three deep, ``values[setup][teacher][seed]``. A setup's row is exactly its own
ablation's comparison (:func:`dgkd.nested.compare_grouped`: teachers, then seeds); the aggregate
(``setup = all``) weighs every setup once: its difference is the mean over setups of each
setup's mean difference, its CI a three-level bootstrap (setups, then teachers, then seeds), its
test the t-test on the setup-level means (``setups - 1`` degrees of freedom; the claim is about
setups like these, so the setup is the unit), and its equivalence bounds the wider of that CI
and the t-interval on the setup means, as one level down. How often the variant wins is told
twice: the share of setups whose mean difference is on the better side (exact binomial CI), and
the share of paired runs that are (ties count one half; CI from the same three-level bootstrap).

Holm's correction runs over every (setup, variant) row of a metric, and separately over the
aggregate rows (one per variant): each family is a question asked once per table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from dgkd.ablate.cells import CellResult
from dgkd.ablate.variants import REFERENCE
from dgkd.metricspec import ABLATION_METRICS, METRICS, MetricSpec
from dgkd.nested import compare_grouped, hierarchical_bootstrap_ci, nested_mean
from dgkd.stats import CONFIDENCE, holm, verdict

__all__ = ["ALL", "COLUMNS", "aggregate_summary", "compare_setups", "nest", "suite_rows"]

ALL = "all"  # the setup name of the aggregate rows

# suite.csv's columns, in order (delta and its CI are variant - full, in the metric's own units)
COLUMNS = (
    "metric", "setup", "variant", "n_setups", "n_teachers", "n_pairs",
    "mean", "mean_ci_low", "mean_ci_high", "delta", "ci_low", "ci_high", "p", "p_holm",
    "verdict", "equiv_low", "equiv_high", "runs_better", "runs_better_low", "runs_better_high",
    "setups_better", "n_setups_better", "setups_better_low", "setups_better_high",
)  # fmt: skip

Nested3 = Sequence[Sequence[Sequence[float]]]


def nest(cells: Sequence[CellResult], variant: str, metric: str) -> list[list[float]]:
    """One setup's ``metric`` of ``variant`` per teacher, aligned by seed (NaN where missing)."""
    seeds = sorted({c.seed for c in cells})
    teachers = sorted({c.teacher_seed for c in cells})
    by = {(c.variant, c.teacher_seed, c.seed): c for c in cells}
    return [
        [by[(variant, t, s)].value(metric) if (variant, t, s) in by else math.nan for s in seeds]
        for t in teachers
    ]


def _pairs(variant: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(variant, dtype=float), np.asarray(reference, dtype=float)
    if x.shape != y.shape:
        raise ValueError("variant and reference must be paired (the same teachers and seeds)")
    both = np.isfinite(x) & np.isfinite(y)
    return x[both], y[both]


def _wins(variant: Any, reference: Any, higher_is_better: bool) -> np.ndarray:
    """1 where the variant's run beats its paired reference run, 0.5 on a tie, else 0."""
    x, y = _pairs(variant, reference)
    d = (x - y) if higher_is_better else (y - x)
    return np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))


def _share(groups: Any) -> tuple[float, float, float]:
    mean = nested_mean(groups)
    low, high = hierarchical_bootstrap_ci(groups)
    return mean, low, high


def compare_setups(variant: Nested3, reference: Nested3, spec: MetricSpec) -> dict[str, Any]:
    """The aggregate comparison of ``variant`` with ``reference`` across setups (the module
    docstring says how); the keys are :data:`COLUMNS`' statistics."""
    if len(variant) != len(reference):
        raise ValueError("variant and reference must have the same setups")
    hib = spec.higher_is_better
    diffs = [
        [np.subtract(*_pairs(x, y)) for x, y in zip(vs, rs, strict=True)]
        for vs, rs in zip(variant, reference, strict=True)
    ]
    means = np.array([m for m in (nested_mean(d) for d in diffs) if math.isfinite(m)])
    low, high = hierarchical_bootstrap_ci(diffs)
    flat = np.concatenate([d for s in diffs for d in s] or [np.empty(0)])
    eq_low = eq_high = p = math.nan
    if len(means) >= 2:
        if np.all(flat == flat[0]):  # every pair the same difference: certain
            p = 1.0 if flat[0] == 0 else 0.0
            eq_low = eq_high = float(flat[0])
        elif not np.all(means == means[0]):
            p = float(sps.ttest_1samp(means, 0.0).pvalue)
            half = float(sps.t.ppf((1 + CONFIDENCE) / 2, len(means) - 1) * sps.sem(means))
            eq_low, eq_high = min(low, means.mean() - half), max(high, means.mean() + half)
    better = int(np.sum(means > 0 if hib else means < 0))
    if len(means):
        ci = sps.binomtest(better, len(means)).proportion_ci(CONFIDENCE, method="exact")
        share = (better / len(means), float(ci.low), float(ci.high))
    else:
        share = (math.nan, math.nan, math.nan)
    wins = [
        [_wins(x, y, hib) for x, y in zip(vs, rs, strict=True)]
        for vs, rs in zip(variant, reference, strict=True)
    ]
    runs = _share(wins)
    return {
        "n_setups": len(means),
        "n_teachers": sum(sum(len(d) > 0 for d in s) for s in diffs),
        "n_pairs": len(flat),
        "delta": float(means.mean()) if len(means) else math.nan,
        "ci_low": low,
        "ci_high": high,
        "p": p,
        "equiv_low": eq_low,
        "equiv_high": eq_high,
        "runs_better": runs[0],
        "runs_better_low": runs[1],
        "runs_better_high": runs[2],
        "setups_better": share[0],
        "n_setups_better": better,
        "setups_better_low": share[1],
        "setups_better_high": share[2],
    }


def _setup_row(variant: Any, reference: Any, spec: MetricSpec) -> dict[str, Any]:
    """One setup's comparison: its ablation's own two-level statistics."""
    cmp = compare_grouped(variant, reference, higher_is_better=spec.higher_is_better)
    wins = [_wins(x, y, spec.higher_is_better) for x, y in zip(variant, reference, strict=True)]
    runs = _share(wins)
    eq_low, eq_high = cmp.equivalence_bounds
    return {
        "n_setups": 1,
        "n_teachers": cmp.n_teachers,
        "n_pairs": cmp.n_pairs,
        "delta": cmp.delta,
        "ci_low": cmp.delta_ci_low,
        "ci_high": cmp.delta_ci_high,
        "p": cmp.p,
        "equiv_low": eq_low,
        "equiv_high": eq_high,
        "runs_better": runs[0],
        "runs_better_low": runs[1],
        "runs_better_high": runs[2],
    }


def _mean_row(values: Any) -> dict[str, Any]:
    low, high = hierarchical_bootstrap_ci(values)
    return {"mean": nested_mean(values), "mean_ci_low": low, "mean_ci_high": high}


def suite_rows(
    setups: Mapping[str, Sequence[CellResult]],
    variants: Sequence[str],
    metrics: Sequence[str] = ABLATION_METRICS,
) -> list[dict[str, Any]]:
    """suite.csv's rows: per metric and variant, one row per setup and one ``all`` row.

    ``setups`` maps each setup's name to its cells (in the suite's order); ``full``'s rows carry
    its means only. Verdicts read the Holm-corrected p of their family.
    """
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        spec = METRICS[metric]
        ref = {name: nest(cells, REFERENCE, metric) for name, cells in setups.items()}
        family: list[dict[str, Any]] = []
        aggregate: list[dict[str, Any]] = []
        for variant in variants:
            own = {name: nest(cells, variant, metric) for name, cells in setups.items()}
            for name in setups:
                row = {"metric": metric, "setup": name, "variant": variant, **_mean_row(own[name])}
                if variant != REFERENCE:
                    row.update(_setup_row(own[name], ref[name], spec))
                    family.append(row)
                rows.append(row)
            row = {"metric": metric, "setup": ALL, "variant": variant}
            row.update(_mean_row(list(own.values())))
            if variant != REFERENCE:
                row.update(compare_setups(list(own.values()), list(ref.values()), spec))
                aggregate.append(row)
            rows.append(row)
        for group in (family, aggregate):
            for row, p in zip(group, holm([r["p"] for r in group]), strict=True):
                row["p_holm"] = p
                row["verdict"] = verdict(
                    row["ci_low"],
                    row["ci_high"],
                    p,
                    higher_is_better=spec.higher_is_better,
                    rope=spec.rope,
                    within=(row["equiv_low"], row["equiv_high"]),
                )
    return [{c: row.get(c, math.nan if c != "verdict" else "") for c in COLUMNS} for row in rows]


def aggregate_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The aggregate rows in an ablation summary's shape (one dict per variant, keyed
    ``<metric>_delta`` and so on), so :func:`dgkd.ablate.claims.check_claims` reads the
    suite's answer as it reads one setup's."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["setup"] != ALL or row["variant"] == REFERENCE:
            continue
        m = row["metric"]
        entry = out.setdefault(row["variant"], {"variant": row["variant"]})
        if m == ABLATION_METRICS[0]:
            entry.update(n_pairs=row["n_pairs"], n_teachers=row["n_teachers"])
        entry.update(
            {
                f"{m}_delta": row["delta"],
                f"{m}_delta_ci_low": row["ci_low"],
                f"{m}_delta_ci_high": row["ci_high"],
                f"{m}_p": row["p"],
                f"{m}_p_holm": row["p_holm"],
                f"{m}_equiv_low": row["equiv_low"],
                f"{m}_equiv_high": row["equiv_high"],
            }
        )
    return list(out.values())

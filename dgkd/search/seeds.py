"""Multi-seed trials: each trial's seed spread and its paired difference to the baseline trial.

Every trial trains the same seeds (:func:`dgkd.search.common.trial_seeds`), so two trials differ
by their parameters alone, seed by seed: the difference of a trial to the study's baseline (its
first enqueued point, e.g. epsilon = 0) is taken per seed, and its standard error is that of
the paired differences, far smaller than the seed-to-seed spread of either trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dgkd.search.records import TrialRecord, completed

if TYPE_CHECKING:
    import pandas as pd

    from dgkd.study import Study

__all__ = ["SEED_COLUMNS", "baseline_record", "same_params", "seed_columns", "seeds_frame"]

# trials.csv columns this module adds after ``value``
SEED_COLUMNS = ("seeds", "value_std", "value_se", "delta_baseline", "delta_baseline_se")


def same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two trials' parameters are the same point (numbers to within 1e-12)."""
    return set(a) == set(b) and all(
        math.isclose(a[k], b[k], abs_tol=1e-12)
        if isinstance(a[k], int | float) and isinstance(b[k], int | float)
        else a[k] == b[k]
        for k in a
    )


def baseline_record(study: Study, records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The first COMPLETE trial at the study's first enqueued point; None without one."""
    if not study.enqueue:
        return None
    point = study.enqueue[0]
    done = sorted(completed(records), key=lambda r: r.number)
    return next((r for r in done if same_params(r.params, point)), None)


def _values(record: TrialRecord, metric: str) -> dict[int, float]:
    seeds = record.seeds or tuple(range(len(record.seed_metrics)))
    return {
        s: float(m.get(metric, math.nan)) for s, m in zip(seeds, record.seed_metrics, strict=False)
    }


def _std_se(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n < 2:
        return math.nan, math.nan
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
    return std, std / math.sqrt(n)


def seed_columns(
    record: TrialRecord, baseline: TrialRecord | None, metric: str
) -> dict[str, float | int | None]:
    """The :data:`SEED_COLUMNS` of one trial (NaN where undefined, e.g. one seed)."""
    mine = _values(record, metric)
    std, se = _std_se(list(mine.values()))
    delta = delta_se = math.nan
    if baseline is not None and record.value is not None and mine:
        theirs = _values(baseline, metric)
        diffs = [mine[s] - theirs[s] for s in mine if s in theirs]
        finite = [d for d in diffs if math.isfinite(d)]
        if finite:
            delta = math.fsum(finite) / len(finite)
            delta_se = _std_se(finite)[1]
    return {
        "seeds": len(record.seeds) or None,
        "value_std": std,
        "value_se": se,
        "delta_baseline": delta,
        "delta_baseline_se": delta_se,
    }


def seeds_frame(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """``trial_seeds.csv``: one row per (trial, seed) with every final metric of that seed."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    metrics: list[str] = []
    for r in sorted(records, key=lambda r: r.number):
        seeds = r.seeds or tuple(range(len(r.seed_metrics)))
        for seed, m in zip(seeds, r.seed_metrics, strict=False):
            metrics += [k for k in m if k not in metrics]
            rows.append({"trial": r.number, "state": r.state.value, "seed": seed, **m})
    return pd.DataFrame(rows, columns=["trial", "state", "seed", *metrics])

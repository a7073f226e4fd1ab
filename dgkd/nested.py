"""Statistics over nested samples: runs grouped by teacher (and, for suites, teachers grouped by
setup), with the teacher as a random factor.

A student's run depends on the teacher it imitates, so a claim about a method must hold across
teachers. With several teacher seeds the values come in groups (one per teacher, each aligned by
student seed): point estimates are the mean over teachers of the mean over seeds, CIs come from a
multi-level bootstrap (resample teachers, then seeds within each resampled teacher), the test is
the t-test on the teacher-level mean differences (one value per teacher, ``teachers - 1``
degrees of freedom: the exact test for the mean of a balanced one-way random-effects model, and
still valid when the effect varies between teachers), and the variance components of the
differences say which factor makes the spread. With one teacher every function here is exactly
its one-level counterpart in :mod:`dgkd.stats`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from dgkd.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    PairedComparison,
    Summary,
    _clean,
    bootstrap_ci,
    compare_paired,
    probability_of_improvement,
    summarize,
)

__all__ = [
    "Nested",
    "compare_grouped",
    "hierarchical_bootstrap_ci",
    "nested_mean",
    "summarize_grouped",
    "variance_components",
]


# A nested sample: a leaf is one teacher's per-seed values; a list of nested samples is a level
# above it (teachers of one setup, setups of one suite).
Nested = Sequence[Any]


def _is_leaf(node: Nested) -> bool:
    return not len(node) or not isinstance(node[0], (list, tuple, np.ndarray))


def _prune(node: Nested) -> Any:
    """``node`` with NaN values dropped and empty branches removed (None when nothing is left)."""
    if (isinstance(node, np.ndarray) and node.ndim == 1) or _is_leaf(node):
        arr = _clean(node)
        return arr if len(arr) else None
    kept = [c for c in (_prune(child) for child in node) if c is not None]
    return kept or None


def _leaves(node: Any) -> list[np.ndarray]:
    return [node] if isinstance(node, np.ndarray) else [a for c in node for a in _leaves(c)]


def _nested_mean(node: Any) -> float:
    if isinstance(node, np.ndarray):
        return float(node.mean())
    return float(np.mean([_nested_mean(c) for c in node]))


def nested_mean(values: Nested) -> float:
    """The mean over the top level of the means below it (a teacher counts once, whatever its
    number of finished seeds); NaN when no value is finite."""
    node = _prune(values)
    return math.nan if node is None else _nested_mean(node)


def _resample(node: Any, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` bootstrap replicates of :func:`nested_mean`, resampling every level with
    replacement: each drawn unit is resampled afresh below (a teacher drawn twice gets two
    independent draws of its seeds)."""
    if isinstance(node, np.ndarray):
        return node[rng.integers(0, len(node), size=(n, len(node)))].mean(1)
    a = len(node)
    picks = rng.integers(0, a, size=(n, a))
    total = np.zeros(n)
    rows = np.arange(n)
    for slot in range(a):
        drawn = np.stack([_resample(child, rng, n) for child in node], axis=1)
        total += drawn[rows, picks[:, slot]]
    return total / a


def hierarchical_bootstrap_ci(
    values: Nested,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile CI of :func:`nested_mean` from a multi-level bootstrap.

    Written out because scipy's ``bootstrap`` resamples one level only; the nested resample
    (teachers, then seeds within each teacher; for suites setups first) is what makes the
    interval cover the variation between teachers, not only between seeds. A single group is
    exactly :func:`bootstrap_ci` of its values.

    Returns:
        ``(low, high)``; both NaN for fewer than two finite values.
    """
    node = _prune(values)
    while node is not None and not isinstance(node, np.ndarray) and len(node) == 1:
        node = node[0]
    if node is None:
        return math.nan, math.nan
    if isinstance(node, np.ndarray):
        return bootstrap_ci(node, seed=seed, n_resamples=n_resamples, confidence=confidence)
    flat = np.concatenate(_leaves(node))
    if np.all(flat == flat[0]):
        return float(flat[0]), float(flat[0])
    reps = _resample(node, np.random.default_rng(seed), n_resamples)
    tail = (1 - confidence) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    return float(low), float(high)


def variance_components(groups: Sequence[ArrayLike]) -> tuple[float, float]:
    """``(sd_teacher, sd_seed)`` of values grouped by teacher: the one-way random-effects
    ANOVA estimates (method of moments, Searle's n0 for unequal groups; a negative between-
    teacher variance is reported as 0). sd_teacher is NaN with fewer than two teachers, sd_seed
    with no teacher holding two values."""
    clean = [g for g in (_clean(g) for g in groups) if len(g)]
    sizes = np.array([len(g) for g in clean], dtype=float)
    total, a = float(sizes.sum()), len(clean)
    if not a:
        return math.nan, math.nan
    within = sum(float(((g - g.mean()) ** 2).sum()) for g in clean)
    ms_within = within / (total - a) if total > a else math.nan
    if a < 2 or not math.isfinite(ms_within):
        return math.nan, math.sqrt(ms_within) if math.isfinite(ms_within) else math.nan
    grand = float(np.concatenate(clean).mean())
    ms_between = float((sizes * (np.array([g.mean() for g in clean]) - grand) ** 2).sum()) / (a - 1)
    n0 = (total - float((sizes**2).sum()) / total) / (a - 1)
    var_teacher = max(0.0, (ms_between - ms_within) / n0)
    return math.sqrt(var_teacher), math.sqrt(ms_within)


def summarize_grouped(groups: Sequence[ArrayLike], *, seed: int = 0) -> Summary:
    """:func:`summarize` of values grouped by teacher: n and std over every finite value, the
    mean over teachers of their seed means, and the two-level bootstrap CI."""
    clean = [g for g in (_clean(g) for g in groups) if len(g)]
    if len(clean) <= 1:
        return summarize(clean[0].tolist() if clean else [], seed=seed)
    flat = np.concatenate(clean)
    low, high = hierarchical_bootstrap_ci(clean, seed=seed)
    return Summary(
        n=len(flat),
        mean=nested_mean(clean),
        std=float(flat.std(ddof=1)),
        ci_low=low,
        ci_high=high,
    )


def compare_grouped(
    variant: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    *,
    higher_is_better: bool = True,
    seed: int = 0,
) -> PairedComparison:
    """:func:`compare_paired` with the values grouped by teacher (``variant[t][i]`` pairs with
    ``reference[t][i]``): the difference is the mean over teachers of the mean paired
    difference, its CI the two-level bootstrap, p the paired t-test on the teacher-level means
    (NaN with fewer than two teachers holding pairs, and when the teacher means are equal while
    the runs are not: the test's variance estimate is then 0, not a real certainty), and the
    variance components of the differences.

    ``equiv_low``/``equiv_high``, the bounds an equivalence verdict reads, are the wider of the
    bootstrap CI and the t-interval on the teacher means (``teachers - 1`` degrees of freedom):
    with three teachers the percentile bootstrap is about the range of the teacher means and
    covers too rarely to call a difference negligible on its own. They are NaN (no equivalence)
    when fewer than two teachers hold pairs. One teacher gives exactly :func:`compare_paired`,
    plus ``sd_seed``."""
    if len(variant) != len(reference):
        raise ValueError("variant and reference must have the same teachers")
    diffs: list[np.ndarray] = []
    for x, y in zip(variant, reference, strict=True):
        xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if xa.shape != ya.shape:
            raise ValueError("paired samples must have the same length")
        both = np.isfinite(xa) & np.isfinite(ya)
        diffs.append(xa[both] - ya[both])
    flat_x = np.concatenate([np.asarray(x, dtype=float) for x in variant] or [np.empty(0)])
    flat_y = np.concatenate([np.asarray(y, dtype=float) for y in reference] or [np.empty(0)])
    p_improve = probability_of_improvement(flat_x, flat_y, higher_is_better=higher_is_better)
    sd_teacher, sd_seed = variance_components(diffs)
    held = [d for d in diffs if len(d)]
    if len(variant) == 1:
        one = compare_paired(variant[0], reference[0], higher_is_better=higher_is_better, seed=seed)
        return dataclasses.replace(one, sd_seed=sd_seed, n_teachers=1)
    means = np.array([d.mean() for d in held])
    flat = np.concatenate(held) if held else np.empty(0)
    low, high = hierarchical_bootstrap_ci(diffs, seed=seed)
    eq_low = eq_high = math.nan
    if len(means) < 2:
        p = math.nan
    elif np.all(flat == flat[0]):  # every pair the same difference: certain
        p = 1.0 if flat[0] == 0 else 0.0
        eq_low = eq_high = float(flat[0])
    elif np.all(means == means[0]):
        p = math.nan
    else:
        p = float(sps.ttest_1samp(means, 0.0).pvalue)
        half = float(sps.t.ppf((1 + CONFIDENCE) / 2, len(means) - 1) * sps.sem(means))
        eq_low, eq_high = min(low, means.mean() - half), max(high, means.mean() + half)
    return PairedComparison(
        n_pairs=int(sum(len(d) for d in diffs)),
        delta=nested_mean(diffs),
        delta_ci_low=low,
        delta_ci_high=high,
        p=p,
        p_improve=p_improve,
        sd_teacher=sd_teacher,
        sd_seed=sd_seed,
        n_teachers=len(held),
        equiv_low=eq_low,
        equiv_high=eq_high,
    )

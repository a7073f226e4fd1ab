"""Statistics for paired ablations: bootstrap CIs, paired tests, Holm, probability of improvement.

Every variant of an ablation runs on the same seeds, so a variant is compared with the reference
*paired*, seed by seed: the per-seed differences remove the seed-to-seed noise that both share
(initialization and batch order), which an unpaired comparison would count against the effect.

The paired test is the paired t-test (:func:`scipy.stats.ttest_rel`), not the Wilcoxon
signed-rank test. Ablations run few seeds (5 by default), and with n = 5 the exact two-sided
Wilcoxon test cannot go below p = 2/32 = 0.0625 whatever the effect, so it could never report a
difference at the 5% level, let alone after a Holm correction. The t-test assumes the per-seed
differences are roughly normal, which is plausible for differences of averages over a test set
of a thousand examples; the bootstrap CI of the difference is reported beside it as an
assumption-light check.

Several teachers (values grouped by teacher) are :mod:`dgkd.nested`'s; the levels of a
sequential design are :mod:`dgkd.sequential`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "N_RESAMPLES",
    "PairedComparison",
    "Summary",
    "bootstrap_ci",
    "compare_paired",
    "holm",
    "paired_test",
    "probability_of_improvement",
    "summarize",
    "verdict",
    "verdict_legend",
    "VERDICT_WORDS",
]

N_RESAMPLES = 10_000  # bootstrap resamples per interval
CONFIDENCE = 0.95  # confidence level of every interval
ALPHA = 0.05  # level at which a corrected p-value counts as a shown difference


@dataclass(frozen=True)
class Summary:
    """n, mean, sample standard deviation (ddof=1) and a bootstrap CI of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedComparison:
    """A variant against the reference on the seeds both finished.

    ``delta`` is the mean of ``variant - reference`` over those seeds, with its bootstrap CI;
    ``p`` is the paired t-test's two-sided p-value (uncorrected); ``p_improve`` is the
    probability that a random seed of the variant beats a random seed of the reference.
    """

    n_pairs: int
    delta: float
    delta_ci_low: float
    delta_ci_high: float
    p: float
    p_improve: float
    # The differences' spread between teachers and between seeds of one teacher (one-way
    # random-effects ANOVA); sd_teacher is NaN with a single teacher.
    sd_teacher: float = math.nan
    sd_seed: float = math.nan
    n_teachers: int = 1
    # What an equivalence verdict reads: the CI itself with one teacher (None here), wider with
    # several (dgkd.nested.compare_grouped).
    equiv_low: float | None = None
    equiv_high: float | None = None

    @property
    def equivalence_bounds(self) -> tuple[float, float]:
        """The interval that must lie within ±rope for an equivalence verdict."""
        if self.equiv_low is None or self.equiv_high is None:
            return self.delta_ci_low, self.delta_ci_high
        return self.equiv_low, self.equiv_high


def _clean(values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    values: ArrayLike,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, reproducible for a given ``seed``.

    Percentile rather than BCa: with five seeds and tied values (accuracies on a finite test set
    tie often) BCa's jackknife acceleration degenerates, while the percentile interval is always
    defined and stays inside the data's range. With so few seeds any bootstrap interval is on the
    narrow side; read it with n.

    Returns:
        ``(low, high)``; both NaN for fewer than two finite values.
    """
    arr = _clean(values)
    if len(arr) < 2:
        return math.nan, math.nan
    if np.all(arr == arr[0]):  # no spread: scipy warns and the interval is the value itself
        return float(arr[0]), float(arr[0])
    res = sps.bootstrap(
        (arr,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float], *, seed: int = 0) -> Summary:
    """n, mean, std (ddof=1) and bootstrap CI of the finite ``values`` (NaN when undefined)."""
    arr = _clean(values)
    n = len(arr)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n >= 2 else math.nan
    low, high = bootstrap_ci(arr, seed=seed)
    return Summary(n=n, mean=mean, std=std, ci_low=low, ci_high=high)


def paired_test(variant: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of ``variant - reference`` (see the module docstring).

    Constant differences have no variance, where scipy returns NaN: identical runs give p = 1,
    a constant non-zero shift p = 0 (the t statistic is infinite). Fewer than two pairs: NaN.
    """
    x, y = np.asarray(variant, dtype=float), np.asarray(reference, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length")
    if len(x) < 2:
        return math.nan
    diff = x - y
    if np.all(diff == diff[0]):
        return 1.0 if diff[0] == 0 else 0.0
    return float(sps.ttest_rel(x, y).pvalue)


def probability_of_improvement(
    variant: ArrayLike, reference: ArrayLike, *, higher_is_better: bool = True
) -> float:
    """P(a random variant seed beats a random reference seed), ties counting one half.

    This is the Mann-Whitney U statistic over ``n_x * n_y`` (Agarwal et al., 2021); unpaired on
    purpose, it says how often the variant would win a single-seed comparison.
    """
    x, y = _clean(variant), _clean(reference)
    if not len(x) or not len(y):
        return math.nan
    if not higher_is_better:
        x, y = -x, -y
    u = sps.mannwhitneyu(x, y, alternative="two-sided").statistic
    return float(u) / (len(x) * len(y))


def compare_paired(
    variant: Sequence[float],
    reference: Sequence[float],
    *,
    higher_is_better: bool = True,
    seed: int = 0,
) -> PairedComparison:
    """The paired comparison of ``variant`` with ``reference`` (aligned by seed).

    Pairs where either value is missing (NaN, e.g. a diverged run) are dropped from the
    difference and the test; the probability of improvement uses every finite value.
    """
    x, y = np.asarray(variant, dtype=float), np.asarray(reference, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length")
    both = np.isfinite(x) & np.isfinite(y)
    diff = x[both] - y[both]
    low, high = bootstrap_ci(diff, seed=seed)
    return PairedComparison(
        n_pairs=int(both.sum()),
        delta=float(diff.mean()) if len(diff) else math.nan,
        delta_ci_low=low,
        delta_ci_high=high,
        p=paired_test(x[both], y[both]),
        p_improve=probability_of_improvement(x, y, higher_is_better=higher_is_better),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; NaN entries stay NaN.

    Written out because scipy's ``false_discovery_control`` offers only the Benjamini-Hochberg
    and -Yekutieli FDR procedures, and Holm's family-wise control is what "is this variant
    different from the reference" needs; it is a step-down of a few lines: sort ascending,
    multiply the i-th smallest by (m - i), take the running maximum, cap at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if not m:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.tolist()


# The verdict words and what each means: shown in verdict.md and summary.md from here.
VERDICT_WORDS: dict[str, str] = {
    "better": f"the 95% CI excludes 0 on the better side and the corrected p is below {ALPHA}",
    "worse": "the same on the worse side",
    "equivalent": "otherwise, the whole 95% CI lies within ±rope, the metric's region of "
    "practical equivalence: any difference is too small to matter",
    "inconclusive": "none of these: more runs are needed to decide",
}


def verdict_legend(ropes: str = "") -> str:
    """One paragraph defining the verdict words (``ropes`` says each metric's rope)."""
    words = "; ".join(f"*{w}*: {meaning}" for w, meaning in VERDICT_WORDS.items())
    return f"Verdicts: {words}." + (f" Ropes: {ropes}." if ropes else "")


def verdict(
    low: float,
    high: float,
    p_corrected: float,
    *,
    higher_is_better: bool = True,
    rope: float = math.nan,
    alpha: float = ALPHA,
    within: tuple[float, float] | None = None,
) -> str:
    """The word (:data:`VERDICT_WORDS`) for a paired difference with CI ``(low, high)`` and a
    corrected p-value.

    ``"better"`` / ``"worse"`` when the CI excludes zero *and* ``p_corrected < alpha`` (with few
    seeds or teachers the percentile bootstrap is narrow, so a CI alone is not trusted); else
    ``"equivalent"`` when the CI lies within ``[-rope, +rope]``; else ``"inconclusive"``;
    ``"not checked"`` when the CI is undefined. ``within`` replaces the CI for the equivalence
    check (:attr:`PairedComparison.equivalence_bounds`; NaN bounds: never equivalent). A
    significant difference is named even inside the rope: it is real, and its size is in the
    table beside the word. ``alpha`` is lower than :data:`ALPHA` at the looks of a sequential
    design (:mod:`dgkd.sequential`).
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not checked"
    beyond_ci = low > 0 or high < 0
    if beyond_ci and math.isfinite(p_corrected) and p_corrected < alpha:
        better = low > 0 if higher_is_better else high < 0
        return "better" if better else "worse"
    eq_low, eq_high = (low, high) if within is None else within
    if math.isfinite(rope) and -rope <= eq_low and eq_high <= rope:
        return "equivalent"
    return "inconclusive"

"""Statistics with teachers as a random factor, against values worked out independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dgkd.nested import (
    compare_grouped,
    hierarchical_bootstrap_ci,
    nested_mean,
    summarize_grouped,
    variance_components,
)
from dgkd.stats import bootstrap_ci, compare_paired, summarize

RNG = np.random.default_rng(3)
# 3 teachers x 8 seeds: teacher offsets of sd 1, seed noise of sd 0.5.
GROUPS = [RNG.normal(off, 0.5, size=8) for off in RNG.normal(0.0, 1.0, size=3)]


def test_one_teacher_is_exactly_the_one_level_statistics() -> None:
    g = GROUPS[0]
    assert hierarchical_bootstrap_ci([g]) == bootstrap_ci(g)
    assert hierarchical_bootstrap_ci([g], seed=5) == bootstrap_ci(g, seed=5)
    assert summarize_grouped([g]) == summarize(list(g))
    ref = g - 0.2 + RNG.normal(0, 0.1, size=8)
    one = compare_grouped([g], [ref])
    two = compare_paired(g, ref)
    assert (one.delta, one.delta_ci_low, one.delta_ci_high, one.p, one.p_improve) == (
        two.delta, two.delta_ci_low, two.delta_ci_high, two.p, two.p_improve,
    )  # fmt: skip
    assert math.isnan(one.sd_teacher) and one.sd_seed == pytest.approx(np.std(g - ref, ddof=1))


def test_variance_components_by_hand() -> None:
    # means 2 and 5, grand 3.5; MS_within = (2 + 2) / 4 = 1; MS_between = 3 * 4.5 / 1 = 13.5;
    # var_teacher = (13.5 - 1) / 3
    sd_t, sd_s = variance_components([[1, 2, 3], [4, 5, 6]])
    assert sd_t == pytest.approx(math.sqrt(12.5 / 3)) and sd_s == pytest.approx(1.0)
    # teachers closer than seed noise predicts: the between variance is reported as 0
    sd_t, sd_s = variance_components([[0, 10], [1, 9]])
    assert sd_t == 0.0 and sd_s == pytest.approx(math.sqrt((50 + 32) / 2))
    # unequal groups (a diverged run): Searle's n0 = (N - sum n_i^2 / N) / (a - 1)
    groups = [[1.0, 2.0, 3.0, math.nan], [6.0, 8.0], [4.0, 4.5, 5.0, 5.5]]
    clean = [np.array([v for v in g if not math.isnan(v)]) for g in groups]
    n = np.array([len(g) for g in clean])
    total, grand = n.sum(), np.concatenate(clean).mean()
    msw = sum(((g - g.mean()) ** 2).sum() for g in clean) / (total - 3)
    msb = sum(len(g) * (g.mean() - grand) ** 2 for g in clean) / 2
    n0 = (total - (n**2).sum() / total) / 2
    sd_t, sd_s = variance_components(groups)
    assert sd_t == pytest.approx(math.sqrt((msb - msw) / n0)) and sd_s == pytest.approx(
        math.sqrt(msw)
    )
    assert math.isnan(variance_components([[1.0, 2.0]])[0])


def test_nested_mean_weighs_each_teacher_once() -> None:
    assert nested_mean([[1.0, 1.0, 1.0, math.nan], [4.0]]) == pytest.approx(2.5)
    assert nested_mean([[[1.0], [3.0]], [[10.0]]]) == pytest.approx(6.0)  # setups, teachers
    assert math.isnan(nested_mean([[math.nan], []]))


def test_teacher_spread_widens_the_interval_as_a_bootstrap_over_teachers() -> None:
    """With no seed noise inside a teacher, the two-level interval is the one-level bootstrap
    of the teacher means; pooling the runs as if independent would be far narrower."""
    means = np.array([0.0, 1.0, 3.0, 4.0, 7.0])
    groups = [np.full(10, m) for m in means]
    low, high = hierarchical_bootstrap_ci(groups, n_resamples=20_000)
    ref_low, ref_high = bootstrap_ci(means, n_resamples=20_000)
    assert low == pytest.approx(ref_low, abs=0.15) and high == pytest.approx(ref_high, abs=0.15)
    pooled_low, pooled_high = bootstrap_ci(np.concatenate(groups))
    assert high - low > 2 * (pooled_high - pooled_low)


def test_hierarchical_bootstrap_is_seeded_and_resamples_seeds_too() -> None:
    assert hierarchical_bootstrap_ci(GROUPS, seed=1) == hierarchical_bootstrap_ci(GROUPS, seed=1)
    assert hierarchical_bootstrap_ci(GROUPS, seed=1) != hierarchical_bootstrap_ci(GROUPS, seed=2)
    # one value per teacher would be the bootstrap of the teacher means; seed noise on top
    # of identical teachers still gives an interval around the grand mean
    same = [np.array([0.0, 1.0, 2.0, 3.0])] * 3
    low, high = hierarchical_bootstrap_ci(same)
    assert low < 1.5 < high and low > 0.0 and high < 3.0
    assert hierarchical_bootstrap_ci([[2.0, 2.0], [2.0]]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in hierarchical_bootstrap_ci([[1.0], [math.nan]]))


def test_compare_grouped_tests_the_teacher_means() -> None:
    ref = [g - 0.3 + RNG.normal(0, 0.2, size=8) for g in GROUPS]
    ref[1][2] = math.nan  # a diverged reference cell: its pair is dropped
    cmp = compare_grouped(GROUPS, ref)
    diffs = [g[np.isfinite(r)] - r[np.isfinite(r)] for g, r in zip(GROUPS, ref, strict=True)]
    means = [d.mean() for d in diffs]
    assert cmp.n_pairs == 23 and cmp.n_teachers == 3
    assert cmp.delta == pytest.approx(np.mean(means))
    assert cmp.p == pytest.approx(sps.ttest_1samp(means, 0.0).pvalue, rel=1e-9)
    assert (cmp.sd_teacher, cmp.sd_seed) == pytest.approx(variance_components(diffs))
    assert (cmp.delta_ci_low, cmp.delta_ci_high) == hierarchical_bootstrap_ci(diffs)
    assert cmp.delta_ci_low < cmp.delta < cmp.delta_ci_high
    flat_x, flat_y = np.concatenate(GROUPS), np.concatenate(ref)
    flat_y = flat_y[np.isfinite(flat_y)]
    u = sum((a > b) + 0.5 * (a == b) for a in flat_x for b in flat_y)
    assert cmp.p_improve == pytest.approx(u / (len(flat_x) * len(flat_y)))
    with pytest.raises(ValueError, match="same teachers"):
        compare_grouped(GROUPS, ref[:2])


def test_summarize_grouped_over_teachers() -> None:
    s = summarize_grouped(GROUPS)
    flat = np.concatenate(GROUPS)
    assert s.n == 24 and s.std == pytest.approx(flat.std(ddof=1))
    assert s.mean == pytest.approx(np.mean([g.mean() for g in GROUPS]))
    assert (s.ci_low, s.ci_high) == hierarchical_bootstrap_ci(GROUPS)


def test_equal_teacher_means_are_not_certainty() -> None:
    """Copies of one teacher (or teachers whose means happen to be equal) have no spread between
    them: the t-test's variance would be 0 and its p 0. It reports no p instead, so the verdict
    can never be better or worse on it."""
    one = np.array([0.01, -0.02, 0.03, 0.0])
    ref = np.zeros(4)
    cmp = compare_grouped([one, one, one], [ref, ref, ref])
    assert math.isnan(cmp.p) and cmp.delta == pytest.approx(one.mean())
    shift = compare_grouped([ref + 0.01] * 3, [ref] * 3)  # every pair the same: certain
    assert shift.p == 0.0 and shift.equivalence_bounds == pytest.approx((0.01, 0.01))


def test_equivalence_reads_the_t_interval_on_teacher_means_too() -> None:
    ref = [np.zeros(8)] * 3
    var = [np.full(8, m) + RNG.normal(0, 0.001, 8) for m in (0.001, 0.003, 0.004)]
    cmp = compare_grouped(var, ref)
    means = [v.mean() for v in var]
    half = sps.t.ppf(0.975, 2) * sps.sem(means)
    low, high = cmp.equivalence_bounds
    assert low == pytest.approx(min(cmp.delta_ci_low, np.mean(means) - half))
    assert high == pytest.approx(max(cmp.delta_ci_high, np.mean(means) + half))
    assert high - low > cmp.delta_ci_high - cmp.delta_ci_low  # wider than the bootstrap here
    # one teacher holding pairs among several: no equivalence, whatever the CI
    lone = compare_grouped([var[0], [math.nan] * 8, [math.nan] * 8], [ref[0]] * 3)
    assert lone.n_teachers == 1 and all(math.isnan(b) for b in lone.equivalence_bounds)
    from dgkd.stats import verdict

    assert verdict(-0.001, 0.001, math.nan, rope=0.005, within=lone.equivalence_bounds) == (
        "inconclusive"
    )

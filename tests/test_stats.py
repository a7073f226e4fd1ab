"""Statistics of the ablation tables against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dgkd.stats import (
    bootstrap_ci,
    compare_paired,
    holm,
    paired_test,
    probability_of_improvement,
    summarize,
)


def test_summary_mean_std_ddof1_and_ci_contains_the_mean():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.n == 5
    assert s.mean == pytest.approx(3.0)
    # ddof=1: sum of squared deviations 10, over n - 1 = 4
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert 1.0 <= s.ci_low < 3.0 < s.ci_high <= 5.0


def test_bootstrap_is_reproducible_with_its_seed_and_varies_without():
    values = [0.61, 0.64, 0.58, 0.66, 0.63]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    cis = {bootstrap_ci(values, seed=s) for s in range(5)}
    assert len(cis) > 1  # the seed is really used


def test_bootstrap_of_two_values_spans_them():
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% percentiles are the two values themselves.
    assert bootstrap_ci([0.0, 1.0]) == pytest.approx((0.0, 1.0))


def test_degenerate_summaries():
    one = summarize([0.7])
    assert one.n == 1 and one.mean == pytest.approx(0.7)
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    same = summarize([0.5, 0.5, 0.5])
    assert same.std == 0.0 and (same.ci_low, same.ci_high) == (0.5, 0.5)
    with_nan = summarize([1.0, float("nan"), 3.0])  # a diverged run is missing, not zero
    assert with_nan.n == 2 and with_nan.mean == pytest.approx(2.0)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_paired_t_test_matches_the_hand_computed_statistic():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [0.5, 1.0, 2.5, 3.0]
    # d = [0.5, 1, 0.5, 1]: mean 0.75, sd sqrt(0.25 / 3), t = 0.75 / (sd / 2) with 3 df
    t = 0.75 / (math.sqrt(0.25 / 3) / 2)
    assert t == pytest.approx(5.196152, rel=1e-6)
    assert paired_test(x, y) == pytest.approx(2 * sps.t.sf(t, 3))
    assert paired_test(x, y) == pytest.approx(paired_test(y, x))  # two-sided


def test_paired_test_edge_cases():
    assert paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # identical runs
    assert paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == 0.0  # constant shift
    assert math.isnan(paired_test([1.0], [2.0]))
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_holm_on_a_fixed_list():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([float("nan"), 0.02, 0.5])  # NaN is not a test: family of two
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.5])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_probability_of_improvement_counts_ties_half():
    x, y = [3.0, 4.0, 5.0], [1.0, 2.0, 3.0]
    # x beats y in 8 of 9 pairs and ties once: (8 + 0.5) / 9
    assert probability_of_improvement(x, y) == pytest.approx(8.5 / 9)
    assert probability_of_improvement(x, y, higher_is_better=False) == pytest.approx(0.5 / 9)
    assert probability_of_improvement(y, y) == pytest.approx(0.5)


def test_compare_paired_drops_incomplete_pairs():
    cmp = compare_paired([1.0, float("nan"), 3.0], [0.0, 1.0, 1.0])
    assert cmp.n_pairs == 2
    assert cmp.delta == pytest.approx(1.5)  # differences 1 and 2
    assert cmp.delta_ci_low == pytest.approx(1.0) and cmp.delta_ci_high == pytest.approx(2.0)
    assert cmp.p == pytest.approx(paired_test([1.0, 3.0], [0.0, 1.0]))
    # unpaired: 1 vs {0, 1, 1} and 3 vs {0, 1, 1} -> (1 + 0.5 + 0.5 + 3) / 6
    assert cmp.p_improve == pytest.approx(5.0 / 6)


def test_compare_paired_delta_ci_is_the_bootstrap_of_the_differences():
    rng = np.random.default_rng(0)
    ref = rng.normal(0.6, 0.02, size=5)
    var = ref + np.array([0.01, 0.012, 0.008, 0.011, 0.009])
    cmp = compare_paired(var, ref, seed=0)
    low, high = bootstrap_ci(var - ref, seed=0)
    assert (cmp.delta_ci_low, cmp.delta_ci_high) == pytest.approx((low, high))
    assert low <= cmp.delta <= high
    assert cmp.delta == pytest.approx(0.01)

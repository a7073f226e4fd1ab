"""Statistics of the ablation tables against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from dgkd.stats import (
    ALPHA,
    CONFIDENCE,
    N_RESAMPLES,
    VERDICT_WORDS,
    bootstrap_ci,
    compare_paired,
    holm,
    paired_test,
    probability_of_improvement,
    summarize,
    verdict,
    verdict_legend,
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


# --- pinned against independent references ----------------------------------------------------


def _quiet(fn, *args, **kwargs):
    """Call with warnings as errors: degenerate inputs must give NaN (or the value) quietly,
    not a RuntimeWarning in the middle of an ablation table."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def _scipy_ci(values, *, seed: int, confidence: float = 0.95, n_resamples: int = 10_000):
    res = sps.bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


# Twenty continuous values: resampled means are practically all distinct, so an interval at
# another level, method, resample count or seed cannot coincide by chance.
SAMPLE = np.random.default_rng(7).normal(0.6, 0.05, size=20)


def test_bootstrap_ci_is_scipys_percentile_interval_at_95_with_seed_0() -> None:
    assert (CONFIDENCE, N_RESAMPLES) == (0.95, 10_000)
    want = _scipy_ci(SAMPLE, seed=0)
    assert _quiet(bootstrap_ci, SAMPLE) == pytest.approx(want, rel=1e-12)
    assert _quiet(bootstrap_ci, SAMPLE.tolist(), seed=3) == pytest.approx(
        _scipy_ci(SAMPLE, seed=3), rel=1e-12
    )
    # The other methods and levels give other intervals on this sample.
    bca = sps.bootstrap((SAMPLE,), np.mean, rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(SAMPLE) != pytest.approx((bca.low, bca.high), rel=1e-6)
    assert bootstrap_ci(SAMPLE) != pytest.approx(_scipy_ci(SAMPLE, seed=0, confidence=0.9))


def test_bootstrap_ci_passes_confidence_and_resamples_through() -> None:
    got = _quiet(bootstrap_ci, SAMPLE, seed=1, confidence=0.8, n_resamples=2000)
    assert got == pytest.approx(_scipy_ci(SAMPLE, seed=1, confidence=0.8, n_resamples=2000))
    narrow, wide = bootstrap_ci(SAMPLE, confidence=0.5), bootstrap_ci(SAMPLE, confidence=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_summarize_ci_and_seed_are_the_bootstraps() -> None:
    s = _quiet(summarize, SAMPLE)
    assert (s.ci_low, s.ci_high) == pytest.approx(_scipy_ci(SAMPLE, seed=0), rel=1e-12)
    s5 = _quiet(summarize, SAMPLE, seed=5)
    assert (s5.ci_low, s5.ci_high) == pytest.approx(_scipy_ci(SAMPLE, seed=5), rel=1e-12)
    assert s.mean == pytest.approx(float(np.mean(SAMPLE)), rel=1e-15)
    assert s.std == pytest.approx(float(np.std(SAMPLE, ddof=1)), rel=1e-12)


def test_two_values_have_a_standard_deviation() -> None:
    s = _quiet(summarize, [1.0, 3.0])
    assert (s.n, s.mean, s.std) == (2, 2.0, pytest.approx(math.sqrt(2.0)))


def test_degenerate_inputs_are_quiet() -> None:
    # Constant values: scipy would warn (and find no spread); the interval is the value itself.
    assert _quiet(bootstrap_ci, [0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert _quiet(bootstrap_ci, [2.0, 2.0]) == (2.0, 2.0)
    empty = _quiet(summarize, [])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.std)
    one = _quiet(summarize, [4.0])
    assert one.mean == 4.0 and math.isnan(one.std)
    none = _quiet(compare_paired, [math.nan, 1.0], [1.0, math.nan])
    assert none.n_pairs == 0 and math.isnan(none.delta) and math.isnan(none.p)
    assert math.isnan(none.delta_ci_low) and math.isnan(none.delta_ci_high)


def test_missing_values_may_be_none() -> None:
    # Final metrics go through JSON, where NaN is written as null: None counts as missing too.
    assert _quiet(summarize, [1.0, None, 3.0]) == _quiet(summarize, [1.0, math.nan, 3.0])
    cmp = _quiet(compare_paired, [1.0, None, 3.0, 4.0], [0.0, 1.0, 1.0, None])
    assert cmp.n_pairs == 2 and cmp.delta == pytest.approx(1.5)
    cmp = _quiet(compare_paired, [0.0, 1.0, 1.0, None], [1.0, None, 3.0, 4.0])
    assert cmp.n_pairs == 2 and cmp.delta == pytest.approx(-1.5)
    out = holm([None, 0.02, 0.5])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.5])
    assert math.isnan(paired_test([1.0, None, 2.0], [0.0, 1.0, 1.0]))
    assert math.isnan(paired_test([0.0, 1.0, 1.0], [1.0, None, 2.0]))


def test_unequal_lengths_are_refused_with_a_message() -> None:
    for fn in (paired_test, compare_paired):
        with pytest.raises(ValueError, match=r"^paired samples must have the same length$"):
            fn([1.0, 2.0, 3.0], [1.0, 2.0])


def test_paired_t_test_on_a_fixed_sample() -> None:
    x = [0.62, 0.65, 0.61, 0.66, 0.64]
    y = [0.60, 0.61, 0.60, 0.62, 0.63]
    # d = [0.02, 0.04, 0.01, 0.04, 0.01]: mean 0.024, s^2 = (2 (0.016^2) + 2 (0.014^2) + 0.004^2)
    # / 4 = 0.00023, t = 0.024 / sqrt(0.00023 / 5) = 3.5386 with 4 degrees of freedom.
    t = 0.024 / math.sqrt(0.00023 / 5)
    assert t == pytest.approx(3.538607, rel=1e-6)
    assert _quiet(paired_test, x, y) == pytest.approx(2 * sps.t.sf(t, 4), rel=1e-9)
    assert paired_test(x, y) == pytest.approx(0.024, abs=0.002)  # about 0.024, by a table
    # A constant shift in the first two pairs only: not the constant-difference shortcut.
    assert 0.0 < paired_test([1.0, 2.0, 3.5], [0.0, 1.0, 3.0]) < 1.0


def test_probability_of_improvement_on_fixed_samples() -> None:
    x, y = [0.70, 0.72, 0.68, 0.71], [0.69, 0.70, 0.73]
    # Wins of x over y: 0.70 beats 0.69, ties 0.70 (1.5); 0.72 beats two (2); 0.68 none (0);
    # 0.71 beats two (2): 5.5 of 12.
    assert _quiet(probability_of_improvement, x, y) == pytest.approx(5.5 / 12)
    assert probability_of_improvement(x, y, higher_is_better=False) == pytest.approx(6.5 / 12)
    assert math.isnan(probability_of_improvement([], [1.0]))
    assert math.isnan(probability_of_improvement([1.0], [math.nan]))


def test_holm_hand_worked_table() -> None:
    #   p      rank  m - rank  scaled  running max  adjusted
    #   0.001  0     5         0.005   0.005        0.005
    #   0.01   1     4         0.04    0.04         0.04
    #   0.012  2     3         0.036   0.04         0.04
    #   0.02   3     2         0.04    0.04         0.04
    #   0.3    4     1         0.3     0.3          0.3
    got = holm([0.02, 0.3, 0.001, 0.012, 0.01])
    assert got == pytest.approx([0.04, 0.3, 0.005, 0.04, 0.04], rel=1e-12)
    # Ties: both get the larger step-down factor.
    assert holm([0.01, 0.01, 0.5]) == pytest.approx([0.03, 0.03, 0.5])
    assert holm([0.2, 0.45]) == pytest.approx([0.4, 0.45])
    assert holm([0.3, 0.8]) == pytest.approx([0.6, 0.8])
    assert holm([0.6, 0.01]) == pytest.approx([0.6, 0.02])
    assert holm([0.7]) == [0.7]


def test_compare_paired_against_independent_references() -> None:
    var = SAMPLE + np.random.default_rng(8).normal(0.01, 0.01, size=20)
    ref = SAMPLE
    cmp = _quiet(compare_paired, var, ref, seed=4)
    d = var - ref
    assert cmp.n_pairs == 20
    assert cmp.delta == pytest.approx(float(d.mean()), rel=1e-12)
    assert (cmp.delta_ci_low, cmp.delta_ci_high) == pytest.approx(_scipy_ci(d, seed=4), rel=1e-12)
    assert cmp.p == pytest.approx(sps.ttest_rel(var, ref).pvalue, rel=1e-9)
    u = sum((a > b) + 0.5 * (a == b) for a in var for b in ref)
    assert cmp.p_improve == pytest.approx(u / 400)
    default = _quiet(compare_paired, var, ref)
    assert (default.delta_ci_low, default.delta_ci_high) == pytest.approx(
        _scipy_ci(d, seed=0), rel=1e-12
    )
    lower = compare_paired(var, ref, higher_is_better=False)
    assert lower.p_improve == pytest.approx(1 - u / 400)
    assert lower.delta == cmp.delta and lower.p == cmp.p


# --- the verdict word --------------------------------------------------------------------------

NAN = math.nan
R = 0.05  # the rope of the table below


@pytest.mark.parametrize(
    ("low", "high", "p", "higher_is_better", "word"),
    [
        # the CI beyond zero and p below ALPHA: better on the better side, else worse
        (0.01, 0.03, 0.01, True, "better"),
        (-0.03, -0.01, 0.01, True, "worse"),
        (-0.03, -0.01, 0.01, False, "better"),
        (0.01, 0.03, 0.01, False, "worse"),
        # a real difference inside the rope is still named: significance comes first
        (0.001, 0.002, 0.001, True, "better"),
        # not significant, the CI within +-rope: equivalent (bounds on the rope count)
        (-0.01, 0.02, 0.2, True, "equivalent"),
        (-0.01, 0.02, 0.05, True, "equivalent"),  # p == ALPHA is not below it
        (-R, R, 0.5, True, "equivalent"),
        (0.01, 0.03, 0.2, True, "equivalent"),  # the CI excludes 0 but p does not agree
        (-0.01, 0.02, NAN, True, "equivalent"),  # no test (one teacher with pairs)
        # neither: inconclusive
        (-0.01, 0.06, 0.2, True, "inconclusive"),
        (-0.06, 0.01, 0.2, False, "inconclusive"),
        (0.01, 0.08, 0.05, True, "inconclusive"),
        (-0.08, -0.01, 0.3, False, "inconclusive"),
        (0.01, 0.03, NAN, True, "equivalent"),
        (0.01, 0.08, NAN, True, "inconclusive"),
        # a bound exactly at zero does not exclude it
        (0.0, 0.03, 0.01, True, "equivalent"),
        (-0.03, 0.0, 0.01, False, "equivalent"),
        (0.0, 0.09, 0.01, True, "inconclusive"),
        # just beyond zero counts
        (1e-12, 0.03, 0.049, True, "better"),
        (-0.03, -1e-12, 0.049, False, "better"),
        # undefined numbers
        (NAN, 0.03, 0.01, True, "not checked"),
        (0.01, NAN, 0.01, True, "not checked"),
        (0.01, math.inf, 0.01, True, "not checked"),
        (-math.inf, -0.01, 0.01, True, "not checked"),
    ],
)
def test_verdict_table(low: float, high: float, p: float, higher_is_better: bool, word: str):
    assert ALPHA == 0.05
    assert verdict(low, high, p, higher_is_better=higher_is_better, rope=R) == word


def test_verdict_defaults_to_higher_is_better_and_no_rope():
    assert verdict(0.01, 0.02, 0.001) == "better"
    assert verdict(-0.02, -0.01, 0.001) == "worse"
    assert verdict(-0.001, 0.001, 0.9) == "inconclusive"  # without a rope, never equivalent
    assert set(VERDICT_WORDS) == {"better", "worse", "equivalent", "inconclusive"}
    legend = verdict_legend("test_acc ±0.5 pts")
    assert all(f"*{w}*" in legend for w in VERDICT_WORDS) and "test_acc ±0.5 pts" in legend

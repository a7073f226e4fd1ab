"""The suite's statistics on synthetic suites whose answer is known, checked against numbers
computed here with numpy and scipy directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dgkd.ablate.cells import CellResult
from dgkd.metricspec import METRICS
from dgkd.suite.stats import ALL, aggregate_summary, compare_setups, suite_rows

ACC = METRICS["test_acc"]
ECE = METRICS["test_ece"]


def _noise(rng: np.random.Generator, n_teachers: int = 3, n_seeds: int = 10) -> np.ndarray:
    return 0.90 + rng.normal(0, 0.01, size=(n_teachers, n_seeds))


def test_one_setup_helps_three_do_not():
    """One setup gains 2 points on every pair, three are exactly unchanged: the aggregate is a
    quarter of the gain, one setup of four is better, and a quarter of the pairs win."""
    rng = np.random.default_rng(0)
    ref = [_noise(rng) for _ in range(4)]
    var = [ref[0] + 0.02, ref[1].copy(), ref[2].copy(), ref[3].copy()]
    out = compare_setups(var, ref, ACC)
    assert out["delta"] == pytest.approx(0.005)
    assert out["n_setups"] == 4 and out["n_pairs"] == 120 and out["n_teachers"] == 12
    assert out["n_setups_better"] == 1 and out["setups_better"] == 0.25
    ci = sps.binomtest(1, 4).proportion_ci(0.95, method="exact")
    assert (out["setups_better_low"], out["setups_better_high"]) == pytest.approx((ci.low, ci.high))
    # paired runs: 30 wins, 90 ties at one half each
    assert out["runs_better"] == pytest.approx((30 + 90 * 0.5) / 120)
    # the t-test on the setup means (0.02, 0, 0, 0), by hand
    means = np.array([0.02, 0, 0, 0])
    t = means.mean() / (means.std(ddof=1) / 2)
    assert out["p"] == pytest.approx(2 * sps.t.sf(abs(t), 3))
    assert out["p"] > 0.05  # one setup of four does not make a general claim
    assert out["ci_low"] <= 0.005 <= out["ci_high"]


def test_identical_variant_gives_zero_with_a_ci_around_it():
    """A variant whose runs are full's runs re-paired (the same values, other seeds) differs by
    exactly 0 on average at every setup, with a CI on both sides of 0 and no verdict of a
    difference."""
    rng = np.random.default_rng(1)
    ref = [_noise(rng) for _ in range(4)]
    var = [np.roll(r, 1, axis=1) for r in ref]  # each teacher's seeds shifted by one
    out = compare_setups(var, ref, ACC)
    assert out["delta"] == pytest.approx(0.0, abs=1e-12)
    assert out["ci_low"] < 0 < out["ci_high"]
    # every setup's mean difference is exactly 0: the t-test has no variance to read (NaN),
    # which no verdict reads as a difference
    assert not out["p"] < 0.05
    assert out["n_setups_better"] == 0


def test_lower_is_better_counts_decreases_as_wins():
    rng = np.random.default_rng(2)
    ref = [_noise(rng) for _ in range(3)]
    var = [r - 0.01 for r in ref]  # ECE down everywhere
    out = compare_setups(var, ref, ECE)
    assert out["n_setups_better"] == 3 and out["runs_better"] == 1.0
    assert out["delta"] == pytest.approx(-0.01)


def _cells(setup_effect: float, rng: np.random.Generator) -> list[CellResult]:
    cells = []
    for t in range(2):
        for s in range(4):
            base = 0.9 + rng.normal(0, 0.01)
            for variant, value in (("full", base), ("no_grad_term", base + setup_effect)):
                cells.append(
                    CellResult(
                        variant=variant,
                        seed=s,
                        status="ok",
                        config_hash="h",
                        teacher_key="k",
                        metrics={"test_acc": value, "test_ece": 0.05},
                        duration_s=1.0,
                        teacher_seed=t,
                    )
                )
    return cells


def test_suite_rows_holm_and_verdicts():
    """Per-setup rows are Holm-corrected across the setups; the aggregate row is its own
    family; verdict words follow the corrected p."""
    rng = np.random.default_rng(3)
    setups = {"a": _cells(0.03, rng), "b": _cells(0.0, rng), "c": _cells(0.031, rng)}
    rows = suite_rows(setups, ("full", "no_grad_term"), metrics=("test_acc",))
    by = {(r["setup"], r["variant"]): r for r in rows}
    assert [r["setup"] for r in rows] == ["a", "b", "c", ALL, "a", "b", "c", ALL]
    setup_rows = [by[(s, "no_grad_term")] for s in "abc"]
    raw = np.array([r["p"] for r in setup_rows])
    order = np.argsort(raw)
    holm = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):  # Holm by hand
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        holm[i] = running
    assert [r["p_holm"] for r in setup_rows] == pytest.approx(list(holm))
    assert by[("a", "no_grad_term")]["verdict"] == "better"
    assert by[("b", "no_grad_term")]["verdict"] == "equivalent"  # exactly 0 on every pair
    agg = by[(ALL, "no_grad_term")]
    assert agg["p_holm"] == agg["p"]  # a family of one
    assert agg["delta"] == pytest.approx(np.mean([0.03, 0.0, 0.031]))
    assert by[("a", "full")]["mean"] == pytest.approx(
        np.mean([c.metrics["test_acc"] for c in setups["a"] if c.variant == "full"])
    )
    assert math.isnan(by[("a", "full")]["delta"]) and by[("a", "full")]["verdict"] == ""


def test_aggregate_summary_feeds_the_claims():
    from dgkd.ablate.claims import check_claims

    rng = np.random.default_rng(4)
    setups = {s: _cells(0.02, rng) for s in "abcd"}  # DKD 2 points above DGKD at every setup
    rows = suite_rows(setups, ("full", "no_grad_term"))
    claims = check_claims(aggregate_summary(rows))
    accuracy = next(c for c in claims if c.metric == "test_acc")
    assert accuracy.verdict == "worse"  # DGKD (full) is below DKD across the setups
    assert accuracy.delta == pytest.approx(-0.02)  # the claims read full - no_grad_term
    assert accuracy.n_pairs == 32
    calibration = next(c for c in claims if c.metric == "test_ece")
    assert calibration.verdict == "equivalent"  # ECE identical on every pair
    fidelity = next(c for c in claims if c.metric == "test_agreement")
    assert fidelity.verdict == "not checked"  # no values

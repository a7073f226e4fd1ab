"""The seed's claims, checked on fixed numbers: full - no_grad_term, CI and Holm p."""

from __future__ import annotations

import pytest

from dgkd.ablate.cells import CellResult
from dgkd.ablate.claims import check_claims
from dgkd.ablate.summary import summarize_cells


def _cell(variant: str, seed: int, **metrics: float) -> CellResult:
    return CellResult(variant, seed, "ok", "h", "t", metrics=metrics)


def test_claims_read_full_minus_no_grad_term():
    # DGKD agrees more with the teacher by 0.02 on every seed; ECE equal; final NC1 noisy.
    cells = []
    # NC1 also collapses faster with DGKD: its mean log NC1 over epochs is 0.5 lower.
    for s, (nc_full, nc_dkd) in enumerate([(1.0, 1.5), (2.0, 1.0), (1.0, 1.2), (2.0, 1.8)]):
        base = {"test_acc": 0.6 + 0.01 * s, "test_kl_to_teacher": 0.3, "test_ece": 0.05}
        full = {"test_agreement": 0.8 + 0.01 * s, "train_nc1": nc_full, "nc1_auc": 2.0 + s / 10}
        dkd = {"test_agreement": 0.78 + 0.01 * s, "train_nc1": nc_dkd, "nc1_auc": 2.5 + s / 10}
        cells.append(_cell("full", s, **base, **full))
        cells.append(_cell("no_grad_term", s, **base, **dkd))
    claims = {c.metric: c for c in check_claims(summarize_cells(cells, ("full", "no_grad_term")))}
    agree = claims["test_agreement"]
    assert agree.verdict == "better" and agree.delta == pytest.approx(0.02)
    assert agree.ci_low == pytest.approx(0.02) and agree.p == 0.0 and agree.n_pairs == 4
    assert claims["test_ece"].verdict == "equivalent" and claims["test_ece"].p == 1.0
    assert claims["train_nc1"].verdict == "inconclusive"  # CI wider than the rope
    faster = claims["nc1_auc"]
    assert (faster.topic, faster.verdict) == ("compactness", "better")
    assert faster.delta == pytest.approx(-0.5)
    missing = check_claims(summarize_cells(cells[::2], ("full",)))
    assert {(c.verdict, c.note) for c in missing} == {
        ("not checked", "add no_grad_term to --variants")
    }
    one = check_claims(summarize_cells(cells[:2], ("full", "no_grad_term")))
    assert all(c.verdict == "not checked" and c.note.startswith("1 seed pair") for c in one)


def test_an_inconclusive_claim_across_teachers_asks_for_what_would_decide_it():
    """Under three teachers DGKD is 0.05, 0.04 and 0.01 ahead on every seed: the CI excludes 0,
    but the t-test on teacher means does not (2 degrees of freedom, p = 0.11), and the spread is
    between teachers, so the sentence asks for more teachers, not seeds."""
    from dgkd.ablate.report import claim_sentences

    cells = []
    for t, gain in enumerate((0.05, 0.04, 0.01)):
        for s in range(4):
            noise = 0.001 * s
            full = CellResult("full", s, "ok", "h", "t", metrics={"test_acc": 0.7 + gain + noise},
                              teacher_seed=t)  # fmt: skip
            dkd = CellResult("no_grad_term", s, "ok", "h", "t", metrics={"test_acc": 0.7 + noise},
                             teacher_seed=t)  # fmt: skip
            cells += [full, dkd]
    claim = next(c for c in check_claims(summarize_cells(cells, ("full", "no_grad_term")))
                 if c.metric == "test_acc")  # fmt: skip
    assert claim.n_teachers == 3 and claim.n_pairs == 12
    assert claim.delta == pytest.approx(0.1 / 3) and claim.verdict == "inconclusive"
    assert claim.ci_low == pytest.approx(0.01) and claim.p == pytest.approx(0.1087, abs=1e-3)
    assert claim.sd_seed == pytest.approx(0.0, abs=1e-9) and claim.sd_teacher > 0.02
    assert claim.more == "teachers"
    (sentence,) = [s for s in claim_sentences([claim])]
    assert "t-test on teacher means" in sentence and "12 pairs under 3 teachers" in sentence
    assert sentence.endswith("Run more teachers to decide.")


def _row(n_pairs: int = 4, **per_metric: float) -> dict:
    """A no_grad_term summary row (no_grad_term - full), the same numbers for every claim's
    metric: a CI of (0.001, 0.003), raw p 0.01, Holm p 0.02, equivalence bounds of the CI."""
    from dgkd.ablate.claims import CLAIMS

    numbers = {"delta": 0.002, "delta_ci_low": 0.001, "delta_ci_high": 0.003, "p": 0.01,
               "p_holm": 0.02, "equiv_low": 0.001, "equiv_high": 0.003, **per_metric}  # fmt: skip
    row: dict = {"variant": "no_grad_term", "n_pairs": n_pairs}
    for _, metric in CLAIMS:
        row.update({f"{metric}_{key}": value for key, value in numbers.items()})
    return row


def test_a_claim_reads_the_summary_row_negated_with_its_defaults() -> None:
    """DGKD - DKD is the row's negation, CI swapped; a row of an older summary without the
    teacher columns reads as one teacher with no variance components."""
    import math

    claim = next(c for c in check_claims([_row()]) if c.metric == "test_acc")
    assert claim.verdict == "worse"  # the CI (-0.003, -0.001) excludes 0, Holm p 0.02
    assert (claim.delta, claim.ci_low, claim.ci_high) == (-0.002, -0.003, -0.001)
    assert (claim.p, claim.p_holm, claim.n_pairs) == (0.01, 0.02, 4)
    assert claim.n_teachers == 1 and math.isnan(claim.sd_teacher) and math.isnan(claim.sd_seed)
    three = {**_row(), "n_teachers": 3, "test_acc_sd_teacher": 0.4, "test_acc_sd_seed": 0.1}
    claim = next(c for c in check_claims([three]) if c.metric == "test_acc")
    assert (claim.n_teachers, claim.sd_teacher, claim.sd_seed) == (3, 0.4, 0.1)


def test_two_pairs_are_enough_to_check_a_claim_and_one_is_not() -> None:
    # DGKD lower by 0.002 everywhere: worse where higher is better, better where lower is
    assert {c.verdict for c in check_claims([_row(n_pairs=2)])} == {"worse", "better"}
    (first, *_) = check_claims([_row(n_pairs=1)])
    assert (first.verdict, first.n_pairs) == ("not checked", 1)
    assert first.note == (
        "1 seed pair(s) of full and no_grad_term finished with this metric; 2 or more are needed"
    )
    (absent, *_) = check_claims([{**_row(), "variant": "kd"}])
    assert (absent.verdict, absent.n_pairs) == ("not checked", 0)


def test_a_claim_without_a_finite_interval_is_not_checked_however_many_pairs() -> None:
    (first, *_) = check_claims([_row(n_pairs=5, delta_ci_low=float("nan"))])
    assert (first.verdict, first.n_pairs) == ("not checked", 5)
    assert first.note.startswith("5 seed pair(s) of full and no_grad_term")


def test_equivalence_uses_the_negated_equivalence_bounds_not_the_ci() -> None:
    """Not significant (Holm p 0.5): the CI (-0.003, 0.002) lies inside test_acc's rope of
    0.005, but the equivalence bounds, negated to (-0.006, 0.001), do not: inconclusive. With
    bounds inside the rope it is equivalent though the CI is wide."""
    wide = {"delta_ci_low": -0.002, "delta_ci_high": 0.003, "p_holm": 0.5}
    claims = check_claims([_row(**wide, equiv_low=-0.001, equiv_high=0.006)])
    acc = next(c for c in claims if c.metric == "test_acc")
    assert acc.verdict == "inconclusive"
    claims = check_claims([_row(delta_ci_low=-0.02, delta_ci_high=0.03, p_holm=0.5,
                                equiv_low=-0.004, equiv_high=0.001)])  # fmt: skip
    acc = next(c for c in claims if c.metric == "test_acc")
    assert acc.verdict == "equivalent"
    # asymmetric bounds: negated they are (-0.006, 0.001), outside the rope on the low side;
    # unnegated (0.006, ...) or unswapped they would differ
    claims = check_claims([_row(delta_ci_low=-0.02, delta_ci_high=0.03, p_holm=0.5,
                                equiv_low=-0.001, equiv_high=0.006)])  # fmt: skip
    assert next(c for c in claims if c.metric == "test_acc").verdict == "inconclusive"

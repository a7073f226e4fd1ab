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

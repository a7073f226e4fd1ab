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
    assert agree.verdict == "supported" and agree.delta == pytest.approx(0.02)
    assert agree.ci_low == pytest.approx(0.02) and agree.p == 0.0 and agree.n_pairs == 4
    assert claims["test_ece"].verdict == "no difference" and claims["test_ece"].p == 1.0
    assert claims["train_nc1"].verdict == "no difference"
    faster = claims["nc1_auc"]
    assert (faster.topic, faster.verdict) == ("compactness", "supported")
    assert faster.delta == pytest.approx(-0.5)
    missing = check_claims(summarize_cells(cells[::2], ("full",)))
    assert {(c.verdict, c.note) for c in missing} == {
        ("not checked", "add no_grad_term to --variants")
    }
    one = check_claims(summarize_cells(cells[:2], ("full", "no_grad_term")))
    assert all(c.verdict == "not checked" and c.note.startswith("1 seed pair") for c in one)

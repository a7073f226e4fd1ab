"""The ablation's summary.csv, summary.md and claims read back against numbers worked out here
with numpy and scipy: three variants besides full, a diverged cell of full and one of a variant,
higher- and lower-is-better metrics, Holm across the variants and claims decided on the Holm p."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from dgkd.ablate.base import BaseConfig
from dgkd.ablate.cells import CellResult
from dgkd.ablate.claims import check_claims
from dgkd.ablate.export import write_ablation_outputs
from dgkd.ablate.report import claim_sentences
from dgkd.ablate.result import AblationResult
from dgkd.ablate.summary import summarize_cells
from dgkd.config import TrainConfig

VARIANTS = ("full", "no_grad_term", "minimize_mse", "kd")
OTHERS = VARIANTS[1:]
SEEDS = range(6)
FULL_DIVERGED = 5  # full's cell of seed 5 diverged: no variant has a pair there
KD_DIVERGED = 0  # and kd's cell of seed 0
LOWER = ("test_ece", "test_kl_to_teacher", "train_nc1")

FULL = {
    "test_acc": np.array([0.80, 0.82, 0.81, 0.83, 0.82, 0.81]),
    "test_ece": np.array([0.050, 0.040, 0.045, 0.050, 0.042, 0.047]),
    "test_kl_to_teacher": np.array([0.30, 0.32, 0.31, 0.29, 0.30, 0.31]),
    "train_nc1": np.array([8.0, 9.0, 8.5, 9.5, 8.8, 9.1]),
}
# variant - full on each seed
DELTA = {
    "no_grad_term": {  # DKD: lower accuracy (raw p < 0.05, Holm p > 0.05), worse ECE and KL
        "test_acc": np.array([-0.004, -0.012, -0.001, -0.010, -0.003, -0.006]),
        "test_ece": np.array([0.010, 0.012, 0.011, 0.009, 0.010, 0.0]),
        "test_kl_to_teacher": np.array([0.05, 0.06, 0.04, 0.05, 0.055, 0.0]),
        "train_nc1": np.array([0.5, -1.0, 2.0, -0.5, 1.0, 0.0]),
    },
    "minimize_mse": {  # clearly worse accuracy, better (lower) ECE and NC1
        "test_acc": np.array([-0.05, -0.06, -0.04, -0.05, -0.055, 0.0]),
        "test_ece": np.array([-0.010, -0.012, -0.011, -0.013, -0.010, 0.0]),
        "test_kl_to_teacher": np.array([0.001, -0.001, 0.002, 0.0, -0.002, 0.0]),
        "train_nc1": np.array([-2.0, -2.5, -1.8, -2.2, -2.1, 0.0]),
    },
    "kd": {  # noisy
        "test_acc": np.array([0.0, 0.02, -0.03, 0.01, -0.01, 0.0]),
        "test_ece": np.array([0.0, 0.01, -0.005, 0.002, 0.004, 0.0]),
        "test_kl_to_teacher": np.array([0.0, 0.1, -0.05, 0.02, 0.03, 0.0]),
        "train_nc1": np.array([0.0, 0.3, -0.2, 0.1, 0.4, 0.0]),
    },
}


def _cells() -> list[CellResult]:
    cells = []
    for v in VARIANTS:
        for s in SEEDS:
            diverged = (v, s) in (("full", FULL_DIVERGED), ("kd", KD_DIVERGED))
            metrics = {} if diverged else {
                m: float(FULL[m][s] + (DELTA[v][m][s] if v != "full" else 0.0)) for m in FULL
            }  # fmt: skip
            status = "diverged" if diverged else "ok"
            cells.append(CellResult(v, s, status, "h", "t", metrics=metrics))
    return cells


def values(variant: str, metric: str) -> np.ndarray:
    """The variant's metric per seed, NaN where its cell diverged."""
    x = FULL[metric] + (DELTA[variant][metric] if variant != "full" else 0.0)
    x = x.copy()
    x[FULL_DIVERGED if variant == "full" else KD_DIVERGED if variant == "kd" else []] = np.nan
    return x


def holm_by_hand(pvalues: Sequence[float]) -> list[float]:
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def expected() -> dict[str, dict[str, float]]:
    """Per variant: n, diverged, n_pairs, and per metric mean, std, delta, p, Holm p, P(better)."""
    out: dict[str, dict[str, float]] = {}
    ref = {m: values("full", m) for m in FULL}
    for v in VARIANTS:
        x0 = values(v, "test_acc")
        row: dict[str, float] = {
            "n": int(np.isfinite(x0).sum()),
            "diverged": int((~np.isfinite(x0)).sum()),
            "n_pairs": int((np.isfinite(x0) & np.isfinite(ref["test_acc"])).sum()),
        }
        for m in FULL:
            x, y = values(v, m), ref[m]
            row[f"{m}_mean"] = float(np.nanmean(x))
            row[f"{m}_std"] = float(np.nanstd(x, ddof=1))
            if v == "full":
                continue
            both = np.isfinite(x) & np.isfinite(y)
            row[f"{m}_delta"] = float((x[both] - y[both]).mean())
            row[f"{m}_p"] = float(sps.ttest_rel(x[both], y[both]).pvalue)
            xs, ys = x[np.isfinite(x)], y[np.isfinite(y)]
            better = (lambda a, b: a < b) if m in LOWER else (lambda a, b: a > b)
            wins = sum(1.0 if better(a, b) else 0.5 if a == b else 0.0 for a in xs for b in ys)
            row[f"{m}_p_improve"] = wins / (len(xs) * len(ys))
        out[v] = row
    for m in FULL:
        for v, p in zip(OTHERS, holm_by_hand([out[v][f"{m}_p"] for v in OTHERS]), strict=True):
            out[v][f"{m}_p_holm"] = p
    return out


WORDS = {  # each variant against full, worked from the expected p-values and the ropes
    ("no_grad_term", "test_acc"): "inconclusive",  # "worse" on the raw p
    ("minimize_mse", "test_acc"): "worse",
    ("kd", "test_acc"): "inconclusive",
    ("no_grad_term", "test_ece"): "worse",  # higher calibration error
    ("minimize_mse", "test_ece"): "better",  # lower calibration error
    ("no_grad_term", "train_nc1"): "inconclusive",
    ("minimize_mse", "train_nc1"): "better",
    ("no_grad_term", "test_kl_to_teacher"): "worse",
    ("minimize_mse", "test_kl_to_teacher"): "equivalent",  # within ±0.01 nats
}


def test_the_design_is_what_the_words_need() -> None:
    e = expected()
    ngt = e["no_grad_term"]
    assert ngt["test_acc_p"] < 0.05 < ngt["test_acc_p_holm"] == 2 * ngt["test_acc_p"]
    assert e["minimize_mse"]["test_acc_p_holm"] < 0.01


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ablation's files, written from the cells."""
    out = tmp_path_factory.mktemp("numbers")
    cells = _cells()
    summary = summarize_cells(cells, VARIANTS)
    result = AblationResult(
        name="numbers", directory=out, base=BaseConfig(TrainConfig(), "default"),
        variants=VARIANTS, seeds=tuple(SEEDS), teacher_seeds=(0,), cells=cells,
        summary=summary, claims=check_claims(summary), ran=0, reused=len(cells),
    )  # fmt: skip
    write_ablation_outputs(result, {})
    return out


def test_summary_csv_holds_every_number_worked_by_hand(written: Path) -> None:
    with (written / "summary.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    e = expected()
    assert list(rows) == list(VARIANTS)
    for v in VARIANTS:
        for key, want in e[v].items():
            assert float(rows[v][key]) == pytest.approx(want, rel=1e-9, abs=1e-12), (v, key)
    assert [int(rows[v]["n_pairs"]) for v in VARIANTS] == [5, 5, 5, 4]
    assert rows["full"]["diverged"] == "1" and rows["kd"]["diverged"] == "1"
    for (v, m), word in WORDS.items():
        assert rows[v][f"{m}_verdict"] == word, (v, m)
    assert math.isnan(float(rows["full"]["test_acc_p_holm"] or "nan"))


def _p(v: float) -> str:
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _table(text: str, heading: str) -> dict[str, list[str]]:
    """summary.md's table under ``heading``: variant -> cells."""
    lines = text.split(heading, 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return {r[0]: r for r in rows if len(r) >= 10 and r[0] in VARIANTS}


def test_summary_md_prints_the_counts_p_values_and_words_worked_by_hand(written: Path) -> None:
    text = (written / "summary.md").read_text()
    e = expected()
    headings = {
        "test_acc": "## Test accuracy (%), higher is better",
        "test_ece": "## Test ECE, lower is better",
        "test_kl_to_teacher": "## Test KL to the teacher, lower is better",
        "train_nc1": "## Final train NC1, lower is better",
    }
    for m, heading in headings.items():
        table = _table(text, heading)
        assert table["full"][2] == "5 (1 diverged)" and table["kd"][2] == "5 (1 diverged)"
        assert table["full"][5] == "(reference)"
        for v in OTHERS:
            cells_ = table[v]
            assert cells_[6] == _p(e[v][f"{m}_p"]), (v, m)
            assert cells_[7] == _p(e[v][f"{m}_p_holm"]), (v, m)
            assert cells_[8] == f"{e[v][f'{m}_p_improve']:.2f}", (v, m)
            if (v, m) in WORDS:
                assert cells_[9] == WORDS[(v, m)], (v, m)
        scale = 100 if m == "test_acc" else 1
        mean = float(table["minimize_mse"][3].split(" ± ")[0])
        assert mean == pytest.approx(scale * e["minimize_mse"][f"{m}_mean"], rel=5e-3)
        delta = float(table["minimize_mse"][5].split(" [")[0])
        assert delta == pytest.approx(scale * e["minimize_mse"][f"{m}_delta"], rel=5e-3, abs=1e-3)


def test_claims_are_decided_on_the_holm_p_across_the_variants() -> None:
    summary = summarize_cells(_cells(), VARIANTS)
    claims = {c.metric: c for c in check_claims(summary)}
    e = expected()["no_grad_term"]
    acc = claims["test_acc"]
    # full - no_grad_term: DGKD is ahead on every pair, raw p < 0.05, but Holm over three
    # variants doubles it past 0.05: not a shown difference
    assert acc.delta == pytest.approx(-e["test_acc_delta"], rel=1e-12) and acc.delta > 0
    assert acc.ci_low > 0 and acc.p < 0.05 < acc.p_holm
    assert acc.p == pytest.approx(e["test_acc_p"], rel=1e-9)
    assert acc.p_holm == pytest.approx(e["test_acc_p_holm"], rel=1e-9)
    assert acc.verdict == "inconclusive" and acc.n_pairs == 5
    ece = claims["test_ece"]  # DGKD's calibration error is lower: better, on the Holm p
    assert ece.verdict == "better" and ece.p_holm == pytest.approx(e["test_ece_p_holm"])
    assert ece.delta < 0 and ece.delta == pytest.approx(-e["test_ece_delta"], rel=1e-12)
    assert claims["test_kl_to_teacher"].verdict == "better"  # lower KL to the teacher
    assert claims["nc1_auc"].verdict == "not checked"  # no NC1 curve in these cells
    sentence = next(s for s in claim_sentences(list(claims.values())) if "test accuracy" in s)
    assert f"paired t-test p = {_p(e['test_acc_p'])}, Holm {_p(e['test_acc_p_holm'])}" in sentence
    assert "5 seed pairs" in sentence and sentence.split(": ", 1)[1].startswith("inconclusive")


def _three_teachers(gains: Sequence[float]) -> list[CellResult]:
    cells = []
    for t, gain in enumerate(gains):
        for s in range(4):
            acc = 0.7 + 0.0005 * s
            cells.append(CellResult("full", s, "ok", "h", "t", metrics={"test_acc": acc},
                                    teacher_seed=t))  # fmt: skip
            cells.append(CellResult("no_grad_term", s, "ok", "h", "t",
                                    metrics={"test_acc": acc + gain}, teacher_seed=t))  # fmt: skip
    return cells


def test_equivalence_across_teachers_needs_the_teacher_means_interval_not_the_ci() -> None:
    """Under 3 teachers DKD - DGKD is +0.004, -0.004 and +0.003 on every seed: the pairs' CI
    (-0.004, 0.004) lies inside test_acc's rope of 0.005, but the t-interval on the 3 teacher
    means (mean 0.001, sd 0.00436, t(2) 4.30) is 0.001 ± 0.0108: not equivalent. The reference
    row has no verdict."""
    ref, dkd = summarize_cells(_three_teachers((0.004, -0.004, 0.003)), ("full", "no_grad_term"))
    assert (dkd["test_acc_delta_ci_low"], dkd["test_acc_delta_ci_high"]) == pytest.approx(
        (-0.004, 0.004)
    )
    half = sps.t.ppf(0.975, 2) * np.std([0.004, -0.004, 0.003], ddof=1) / math.sqrt(3)
    assert (dkd["test_acc_equiv_low"], dkd["test_acc_equiv_high"]) == pytest.approx(
        (0.001 - half, 0.001 + half)
    )
    assert dkd["test_acc_verdict"] == "inconclusive"
    assert ref["variant"] == "full" and ref["test_acc_verdict"] == ""
    # the row's own variance columns are the headline metric's (test accuracy)
    assert dkd["n_teachers"] == 3
    assert (
        dkd["sd_teacher"]
        == dkd["test_acc_sd_teacher"]
        == pytest.approx(np.std([0.004, -0.004, 0.003], ddof=1))
    )
    assert dkd["sd_seed"] == dkd["test_acc_sd_seed"] == pytest.approx(0.0, abs=1e-12)


def test_a_missing_cell_leaves_its_seed_out_of_the_pairs() -> None:
    """A cell that never ran (not even a diverged record) is no pair: 3 of 4 seeds pair."""
    cells = [c for c in _three_teachers((0.01,))
             if not (c.variant == "no_grad_term" and c.seed == 3)]  # fmt: skip
    _, dkd = summarize_cells(cells, ("full", "no_grad_term"))
    assert dkd["n_pairs"] == 3 and dkd["test_acc_delta"] == pytest.approx(0.01)

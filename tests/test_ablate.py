"""Ablations: variants, pairing, resuming, changed-base refusal, divergence, executors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import dgkd.ablate as ablate
from dgkd.ablate import (
    VARIANTS,
    AblateError,
    AblationOptions,
    BaseConfigChangedError,
    CellFailedError,
    CellResult,
    check_claims,
    parse_variants,
    plan_cells,
    resolve_base,
    run_ablation,
    summarize_cells,
)
from dgkd.config import TrainConfig
from dgkd.loop import DivergedError
from dgkd.teacher import teacher_key

TINY = {"epochs": 2, "teacher_epochs": 2}


def _opts(tmp_path: Path, **kw) -> AblationOptions:
    kw.setdefault("variants", ("no_grad_term", "minimize_mse"))
    kw.setdefault("seeds", 2)
    return AblationOptions(out_dir=tmp_path, **kw)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _diff(a: TrainConfig, b: TrainConfig) -> dict:
    da, db = a.to_dict(), b.to_dict()
    return {k: db[k] for k in da if da[k] != db[k]}


# --- the variant registry ----------------------------------------------------------------------


EXPECTED = {
    "full": {},
    "no_grad_term": {"epsilon": 0.0},
    "minimize_mse": {"grad_sign": 1.0},
    "raw_mse": {"grad_term": "raw"},
    "kd": {"method": "kd"},
    "ce": {"method": "ce"},
    "tckd_only": {"beta": 0.0, "epsilon": 0.0},
    "nckd_only": {"alpha": 0.0, "epsilon": 0.0},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_variant_changes_exactly_what_it_says(name):
    base = TrainConfig(temperature=2.5, alpha=1.5, beta=4.0, epsilon=3.0, lr=0.02)
    changed = VARIANTS[name].apply(base)
    assert _diff(base, changed) == EXPECTED[name]
    doc = VARIANTS[name].doc
    assert doc and "\n" not in doc and len(doc) < 60  # one line that fits a table
    if name == "kd":  # Hinton KD at the same temperature
        assert changed.temperature == 2.5


def test_registry_is_complete_and_full_comes_first():
    assert list(VARIANTS) == list(EXPECTED)
    assert parse_variants("all") == tuple(EXPECTED)
    assert parse_variants("kd,no_grad_term,kd") == ("full", "kd", "no_grad_term")
    assert parse_variants(["minimize_mse", "full"]) == ("full", "minimize_mse")
    with pytest.raises(AblateError, match=r"unknown variant 'eps0'.*no_grad_term.*nckd_only"):
        parse_variants("no_grad_term,eps0")


# --- pairing -----------------------------------------------------------------------------------


def test_all_variants_share_seeds_split_and_teacher():
    base = TrainConfig(**TINY, teacher_seed=3, split_seed=2)
    cells = plan_cells(base, tuple(VARIANTS), range(4))
    assert len(cells) == len(VARIANTS) * 4
    seeds = {v: sorted(c.seed for c in cells if c.variant == v) for v in VARIANTS}
    assert all(s == [0, 1, 2, 3] for s in seeds.values())
    assert all(c.config.seed == c.seed for c in cells)
    assert {c.teacher_key for c in cells} == {teacher_key(base)}
    assert {(c.config.split_seed, c.config.teacher_seed) for c in cells} == {(2, 3)}
    # seed-major: an interrupted run leaves whole pairs behind
    assert [c.variant for c in cells[: len(VARIANTS)]] == list(VARIANTS)
    # within one seed, a cell differs from full only by its variant's changes
    full = {c.seed: c.config for c in cells if c.variant == "full"}
    for c in cells:
        assert _diff(full[c.seed], c.config) == EXPECTED[c.variant]


def test_base_overrides_and_method_check():
    base = resolve_base(overrides={"epochs": 3})
    assert base.config == TrainConfig(epochs=3) and base.default_name == "default"
    with pytest.raises(AblateError, match="reference row of an ablation is dgkd"):
        resolve_base(overrides={"method": "kd"})
    with pytest.raises(AblateError, match="--storage is only read with --from-study"):
        resolve_base(storage="sqlite:///x.db")


def test_study_base_without_search():
    base = resolve_base(study="smoke", overrides={"lr": 0.02})
    assert base.source == "study" and base.default_name == "smoke"
    assert (base.config.epochs, base.config.teacher_epochs, base.config.lr) == (2, 2, 0.02)
    with pytest.raises(AblateError, match="unknown study 'nope'"):
        resolve_base(study="nope")


# --- running, resuming, refusing ---------------------------------------------------------------


def test_run_writes_every_output_with_paired_cells(tmp_path):
    base = resolve_base(overrides=TINY)
    res = run_ablation(base, _opts(tmp_path))
    d = tmp_path / "ablate" / "default"
    assert res.directory == d and res.ran == 6 and res.reused == 0
    for name in ("runs.csv", "summary.csv", "summary.md", "config.json", "ablation.png"):
        assert (d / name).stat().st_size > 0, name
    assert (d / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = _rows(d / "runs.csv")
    assert [(r["variant"], r["seed"]) for r in runs] == [
        (v, s) for s in ("0", "1") for v in ("full", "no_grad_term", "minimize_mse")
    ]
    assert {r["teacher_key"] for r in runs} == {teacher_key(base.config)}
    assert all(0 < float(r["test_acc"]) <= 1 and r["status"] == "ok" for r in runs)
    summary = _rows(d / "summary.csv")
    assert [r["variant"] for r in summary] == ["full", "no_grad_term", "minimize_mse"]
    assert list(summary[0])[:7] == [
        "variant", "description", "n", "diverged", "n_pairs", "test_acc_mean", "test_acc_std",
    ]  # fmt: skip
    for metric in ablate.METRICS:
        mean = sum(float(r[metric]) for r in runs if r["variant"] == "full")
        assert math.isclose(float(summary[0][f"{metric}_mean"]), mean / 2, rel_tol=1e-9)
    ngt = summary[1]
    delta = sum(
        float(a["test_acc"]) - float(b["test_acc"])
        for a, b in zip(runs[1::3], runs[0::3], strict=True)
    )
    assert float(ngt["test_acc_delta"]) == pytest.approx(delta / 2)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["base"]["config"]["epochs"] == 2 and cfg["seeds"] == [0, 1]
    assert cfg["base_hash"] == base.hash and {"torch", "scipy", "python"} <= set(cfg["versions"])
    assert list(cfg["variants"]) == ["full", "no_grad_term", "minimize_mse"]
    md = (d / "summary.md").read_text()
    assert "## The seed's claims" in md and "| no_grad_term |" in md
    assert len(res.claims) == 5 and all(c.verdict != "not checked" for c in res.claims)


def test_interrupted_ablation_resumes_without_rerunning_finished_cells(tmp_path, monkeypatch):
    base = resolve_base(overrides=TINY)
    real = ablate.run_cell
    calls: list[str] = []
    fail_at = [3]  # the third cell raises, once

    def flaky(config):
        calls.append(f"{config['grad_sign']}/{config['epsilon']}/{config['seed']}")
        if len(calls) == fail_at[0]:
            fail_at[0] = 0
            raise RuntimeError("node lost")
        return real(config)

    monkeypatch.setattr(ablate, "run_cell", flaky)
    with pytest.raises(CellFailedError, match=r"minimize_mse seed 0 failed: node lost.*rerun"):
        run_ablation(base, _opts(tmp_path))
    cells = tmp_path / "ablate" / "default" / "cells"
    finished = sorted(p.name for p in cells.glob("*.json"))
    assert finished == ["full-seed0.json", "no_grad_term-seed0.json"]
    assert not (cells.parent / "summary.csv").exists()  # no table from a partial ablation
    mtimes = {p: p.stat().st_mtime_ns for p in cells.glob("*.json")}

    calls.clear()
    res = run_ablation(base, _opts(tmp_path))
    assert len(calls) == 4 and res.ran == 4 and res.reused == 2
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert len(list(cells.glob("*.json"))) == 6
    calls.clear()
    again = run_ablation(base, _opts(tmp_path, seeds=3))  # one more seed: only its cells run
    assert len(calls) == 3 and again.ran == 3 and again.reused == 6


def test_changed_base_is_refused_and_fresh_starts_over(tmp_path):
    run_ablation(resolve_base(overrides=TINY), _opts(tmp_path, variants=("kd",), seeds=1))
    other = resolve_base(overrides={**TINY, "lr": 0.02})
    with pytest.raises(BaseConfigChangedError, match=r"different base config.*--fresh.*--name"):
        run_ablation(other, _opts(tmp_path, variants=("kd",), seeds=1))
    named = run_ablation(other, _opts(tmp_path, variants=("kd",), seeds=1, name="lr02"))
    assert named.directory.name == "lr02" and named.ran == 2
    fresh = run_ablation(other, _opts(tmp_path, variants=("kd",), seeds=1, fresh=True))
    assert fresh.ran == 2 and fresh.moved_to is not None
    assert (fresh.moved_to / "cells" / "kd-seed0.json").exists()  # old results kept aside
    manifest = fresh.directory / "config.json"
    info = json.loads(manifest.read_text())
    assert info["base_hash"] == other.hash
    info["versions"]["dgkd"] = "0.0.1"  # cells of another release are not mixed in either
    manifest.write_text(json.dumps(info))
    with pytest.raises(BaseConfigChangedError, match=r"computed by dgkd 0\.0\.1.*--fresh"):
        run_ablation(other, _opts(tmp_path, variants=("kd",), seeds=1))


def test_diverged_cell_is_counted_and_shown(tmp_path, monkeypatch):
    real = ablate.train

    def train(cfg, **kw):
        if cfg.grad_sign == 1.0 and cfg.seed == 1:
            raise DivergedError(2, 7, float("nan"))
        return real(cfg, **kw)

    monkeypatch.setattr(ablate, "train", train)
    res = run_ablation(resolve_base(overrides=TINY), _opts(tmp_path))
    d = res.directory
    runs = {(r["variant"], r["seed"]): r for r in _rows(d / "runs.csv")}
    bad = runs[("minimize_mse", "1")]
    assert (bad["status"], bad["diverged_epoch"], bad["diverged_step"]) == ("diverged", "2", "7")
    assert bad["test_acc"] == ""  # missing, not zero
    row = next(r for r in _rows(d / "summary.csv") if r["variant"] == "minimize_mse")
    assert (row["n"], row["diverged"], row["n_pairs"]) == ("1", "1", "1")
    assert float(row["test_acc_mean"]) == pytest.approx(
        float(runs[("minimize_mse", "0")]["test_acc"])
    )
    assert (
        "| minimize_mse | grad_sign = +1: minimize the gradient MSE | 1 (1 diverged) |"
        in (d / "summary.md").read_text()
    )
    cell = json.loads((d / "cells" / "minimize_mse-seed1.json").read_text())
    assert cell["status"] == "diverged" and cell["diverged"]["epoch"] == 2
    # resuming keeps the divergence as a result instead of retrying it
    monkeypatch.setattr(ablate, "train", real)
    assert run_ablation(resolve_base(overrides=TINY), _opts(tmp_path)).ran == 0


def _same_cells(a_cells, b_cells) -> None:
    for a, b in zip(a_cells, b_cells, strict=True):
        assert (a.variant, a.seed, a.config_hash) == (b.variant, b.seed, b.config_hash)
        assert a.metrics["test_acc"] == b.metrics["test_acc"]
        assert a.metrics["test_kl_to_teacher"] == pytest.approx(b.metrics["test_kl_to_teacher"])


def test_worker_processes_give_the_same_metrics(tmp_path):
    base = resolve_base(overrides=TINY)
    seq = run_ablation(base, _opts(tmp_path, variants=("kd",), name="seq"))
    par = run_ablation(base, _opts(tmp_path, variants=("kd",), name="par", workers=2))
    assert par.ran == 4
    _same_cells(seq.cells, par.cells)


@pytest.mark.slow
def test_ray_tasks_give_the_same_metrics(tmp_path):
    pytest.importorskip("ray")
    base = resolve_base(overrides=TINY)
    seq = run_ablation(base, _opts(tmp_path, variants=("kd",), seeds=1, name="seq"))
    # "local" starts a private cluster instead of joining one that happens to run here
    opts = _opts(tmp_path, variants=("kd",), seeds=1, name="ray", backend="ray", address="local")
    par = run_ablation(base, opts)
    assert par.ran == 2
    _same_cells(seq.cells, par.cells)


def test_bad_options(tmp_path):
    base = resolve_base(overrides=TINY)
    with pytest.raises(AblateError, match="--seeds must be >= 1"):
        run_ablation(base, _opts(tmp_path, seeds=0))
    with pytest.raises(AblateError, match="--address is for --backend ray"):
        run_ablation(base, _opts(tmp_path, address="auto"))
    assert not (tmp_path / "ablate" / "default").exists()


# --- claims on fixed numbers -------------------------------------------------------------------


def _cell(variant: str, seed: int, **metrics: float) -> CellResult:
    return CellResult(variant, seed, "ok", "h", "t", metrics=metrics)


def test_claims_read_full_minus_no_grad_term():
    # DGKD agrees more with the teacher by 0.02 on every seed; ECE equal; NC1 noisy.
    cells = []
    for s, (nc_full, nc_dkd) in enumerate([(1.0, 1.5), (2.0, 1.0), (1.0, 1.2), (2.0, 1.8)]):
        base = {"test_acc": 0.6 + 0.01 * s, "test_kl_to_teacher": 0.3, "test_ece": 0.05}
        cells.append(_cell("full", s, **base, test_agreement=0.8 + 0.01 * s, train_nc1=nc_full))
        cells.append(
            _cell("no_grad_term", s, **base, test_agreement=0.78 + 0.01 * s, train_nc1=nc_dkd)
        )
    claims = {c.metric: c for c in check_claims(summarize_cells(cells, ("full", "no_grad_term")))}
    agree = claims["test_agreement"]
    assert agree.verdict == "supported" and agree.delta == pytest.approx(0.02)
    assert agree.ci_low == pytest.approx(0.02) and agree.p == 0.0 and agree.n_pairs == 4
    assert claims["test_ece"].verdict == "no difference" and claims["test_ece"].p == 1.0
    assert claims["train_nc1"].verdict == "no difference"
    missing = check_claims(summarize_cells(cells[::2], ("full",)))
    assert {(c.verdict, c.note) for c in missing} == {
        ("not checked", "add no_grad_term to --variants")
    }
    one = check_claims(summarize_cells(cells[:2], ("full", "no_grad_term")))
    assert all(c.verdict == "not checked" and c.note.startswith("1 seed pair") for c in one)

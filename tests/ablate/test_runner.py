"""Running an ablation: every output, paired cells, resuming, refusing, divergence."""

from __future__ import annotations

import json
import math

import pytest

import dgkd.train
from dgkd.ablate import (
    AblateError,
    BaseConfigChangedError,
    CellFailedError,
    executors,
    resolve_base,
    run_ablation,
)
from dgkd.ablate import cells as ablate_cells
from dgkd.ablate.summary import METRICS
from dgkd.loop import DivergedError
from dgkd.teacher import teacher_key

from .helpers import TINY, opts, rows, same_cells


def test_run_writes_every_output_with_paired_cells(tmp_path):
    base = resolve_base(overrides=TINY)
    res = run_ablation(base, opts(tmp_path))
    d = tmp_path / "ablate" / "default"
    assert res.directory == d and res.ran == 6 and res.reused == 0
    for name in ("runs.csv", "summary.csv", "summary.md", "config.json", "ablation.png"):
        assert (d / name).stat().st_size > 0, name
    assert (d / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = rows(d / "runs.csv")
    assert [(r["variant"], r["seed"]) for r in runs] == [
        (v, s) for s in ("0", "1") for v in ("full", "no_grad_term", "minimize_mse")
    ]
    assert {r["teacher_key"] for r in runs} == {teacher_key(base.config)}
    assert all(0 < float(r["test_acc"]) <= 1 and r["status"] == "ok" for r in runs)
    summary = rows(d / "summary.csv")
    assert [r["variant"] for r in summary] == ["full", "no_grad_term", "minimize_mse"]
    assert list(summary[0])[:7] == [
        "variant", "description", "n", "diverged", "n_pairs", "test_acc_mean", "test_acc_std",
    ]  # fmt: skip
    for metric in METRICS:
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
    assert len(res.claims) == 6 and all(c.verdict != "not checked" for c in res.claims)
    assert [c.metric for c in res.claims if c.topic == "compactness"] == ["nc1_auc", "train_nc1"]
    history = rows(d / "history.csv")
    assert len(history) == 6 * 2 and {"train_nc1", "val_acc", "val_ece"} <= set(history[0])
    for cell in res.cells:  # the curve summary is the mean log NC1 of the stored history
        logs = [math.log(row["train_nc1"]) for row in cell.history]
        assert cell.metrics["nc1_auc"] == pytest.approx(sum(logs) / 2, rel=1e-12)
        assert cell.history[-1]["train_nc1"] == pytest.approx(cell.metrics["train_nc1"], rel=1e-6)


def test_interrupted_ablation_resumes_without_rerunning_finished_cells(tmp_path, monkeypatch):
    base = resolve_base(overrides=TINY)
    real = ablate_cells.run_cells
    calls: list[list[str]] = []
    fail_at = [2]  # the second population raises, once

    def flaky(configs):
        calls.append([f"{c['grad_sign']}/{c['epsilon']}/{c['seed']}" for c in configs])
        if len(calls) == fail_at[0]:
            fail_at[0] = 0
            raise RuntimeError("node lost")
        return real(configs)

    monkeypatch.setattr(executors, "run_cells", flaky)
    with pytest.raises(
        CellFailedError,
        match=r"2 cells minimize_mse seed 0 \.\. full seed 1 failed: node lost.*rerun",
    ):
        run_ablation(base, opts(tmp_path, population=2))
    cells = tmp_path / "ablate" / "default" / "cells"
    finished = sorted(p.name for p in cells.glob("*.json"))
    assert finished == ["full-teacher0-seed0.json", "no_grad_term-teacher0-seed0.json"]
    assert not (cells.parent / "summary.csv").exists()  # no table from a partial ablation
    mtimes = {p: p.stat().st_mtime_ns for p in cells.glob("*.json")}

    calls.clear()
    res = run_ablation(base, opts(tmp_path, population=2))
    assert [len(c) for c in calls] == [2, 2] and res.ran == 4 and res.reused == 2
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert len(list(cells.glob("*.json"))) == 6
    calls.clear()
    again = run_ablation(base, opts(tmp_path, n_seeds=3))  # one more seed: only its cells run
    assert [len(c) for c in calls] == [3] and again.ran == 3 and again.reused == 6
    # a cell reproduces its numbers whichever population it landed in
    alone = run_ablation(base, opts(tmp_path, n_seeds=3, population=1, name="alone"))
    same_cells(again.cells, alone.cells)
    for a, b in zip(again.cells, alone.cells, strict=True):
        assert a.metrics.keys() == b.metrics.keys() and a.history == b.history
        assert all(a.metrics[k] == b.metrics[k] for k in a.metrics if k != "duration_s")


def test_changed_base_is_refused_and_fresh_starts_over(tmp_path):
    run_ablation(resolve_base(overrides=TINY), opts(tmp_path, variants=("kd",), n_seeds=1))
    other = resolve_base(overrides={**TINY, "lr": 0.03})
    with pytest.raises(BaseConfigChangedError, match=r"different base config.*--fresh.*--name"):
        run_ablation(other, opts(tmp_path, variants=("kd",), n_seeds=1))
    named = run_ablation(other, opts(tmp_path, variants=("kd",), n_seeds=1, name="lr03"))
    assert named.directory.name == "lr03" and named.ran == 2
    fresh = run_ablation(other, opts(tmp_path, variants=("kd",), n_seeds=1, fresh=True))
    assert fresh.ran == 2 and fresh.moved_to is not None
    assert (fresh.moved_to / "cells" / "kd-teacher0-seed0.json").exists()  # old results kept aside
    manifest = fresh.directory / "config.json"
    info = json.loads(manifest.read_text())
    assert info["base_hash"] == other.hash
    info["versions"]["dgkd"] = "0.0.1"  # cells of another release are not mixed in either
    manifest.write_text(json.dumps(info))
    with pytest.raises(BaseConfigChangedError, match=r"computed with dgkd 0\.0\.1.*--fresh"):
        run_ablation(other, opts(tmp_path, variants=("kd",), n_seeds=1))
    info["versions"]["dgkd"] = None
    info["versions"]["torch"] = "1.0.0"  # nor cells whose teachers another torch trained
    manifest.write_text(json.dumps(info))
    with pytest.raises(BaseConfigChangedError, match=r"computed with torch 1\.0\.0.*--fresh"):
        run_ablation(other, opts(tmp_path, variants=("kd",), n_seeds=1))
    info["versions"]["torch"] = None
    del info["teacher_seeds"]  # a directory from before teachers were a factor
    manifest.write_text(json.dumps(info))
    with pytest.raises(BaseConfigChangedError, match=r"before teachers were a factor.*--fresh"):
        run_ablation(other, opts(tmp_path, variants=("kd",), n_seeds=1))


def test_diverged_cell_is_counted_and_shown(tmp_path, monkeypatch):
    real = dgkd.train.train_population

    def train_population(cfgs, **kw):
        results = real(cfgs, **kw)
        for r in results:
            if r.config.grad_sign == 1.0 and r.config.seed == 1:
                r.metrics, r.history[1:], r.model = {}, [], None
                r.error = DivergedError(2, 7, float("nan"))
        return results

    monkeypatch.setattr(dgkd.train, "train_population", train_population)
    res = run_ablation(resolve_base(overrides=TINY), opts(tmp_path))
    d = res.directory
    runs = {(r["variant"], r["seed"]): r for r in rows(d / "runs.csv")}
    bad = runs[("minimize_mse", "1")]
    assert (bad["status"], bad["diverged_epoch"], bad["diverged_step"]) == ("diverged", "2", "7")
    assert bad["test_acc"] == ""  # missing, not zero
    row = next(r for r in rows(d / "summary.csv") if r["variant"] == "minimize_mse")
    assert (row["n"], row["diverged"], row["n_pairs"]) == ("1", "1", "1")
    assert float(row["test_acc_mean"]) == pytest.approx(
        float(runs[("minimize_mse", "0")]["test_acc"])
    )
    assert (
        "| minimize_mse | grad_sign = +1: minimize the gradient MSE | 1 (1 diverged) |"
        in (d / "summary.md").read_text()
    )
    cell = json.loads((d / "cells" / "minimize_mse-teacher0-seed1.json").read_text())
    assert cell["status"] == "diverged" and cell["diverged"]["epoch"] == 2
    assert [row["epoch"] for row in cell["history"]] == [1]  # its curve up to the divergence
    # resuming keeps the divergence as a result instead of retrying it
    monkeypatch.setattr(dgkd.train, "train_population", real)
    assert run_ablation(resolve_base(overrides=TINY), opts(tmp_path)).ran == 0


def test_bad_options(tmp_path):
    base = resolve_base(overrides=TINY)
    with pytest.raises(AblateError, match="--seeds must be >= 1"):
        run_ablation(base, opts(tmp_path, n_seeds=0))
    with pytest.raises(AblateError, match="--address is for --backend ray"):
        run_ablation(base, opts(tmp_path, address="auto"))
    assert not (tmp_path / "ablate" / "default").exists()

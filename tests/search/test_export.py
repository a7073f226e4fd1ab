"""Tests for dgkd.search.export: atomic writers, the trials table, best.json, importances and
plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dgkd.config import TrainConfig
from dgkd.search.export import (
    best_record,
    importances,
    train_command,
    trials_frame,
    write_csv,
    write_json,
    write_png,
    write_search_outputs,
)
from dgkd.search.records import TrialRecord
from dgkd.study import load_study

PNG = b"\x89PNG\r\n\x1a\n"


def rec(number: int, state: str = "COMPLETE", value: float | None = None, **params) -> TrialRecord:
    metrics = {}
    if state == "COMPLETE":
        metrics = {"val_acc": value, "test_acc": (value or 0) - 0.01, "duration_s": 1.0}
    return TrialRecord(
        number=number,
        state=state,
        value=value if state == "COMPLETE" else None,
        params=params,
        duration_s=1.5,
        pruned_epoch=3 if state == "PRUNED" else None,
        metrics=metrics,
        fail_reason="diverged: loss became nan" if state == "FAIL" else "",
        fail_epoch=2 if state == "FAIL" else None,
    )


def test_write_csv_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.csv"
    write_csv(path, pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    write_csv(path, pd.DataFrame({"a": [3]}))
    assert path.read_text() == "a\n3\n"
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]


def test_write_json_turns_nan_into_null(tmp_path: Path) -> None:
    path = write_json(tmp_path / "x.json", {"a": math.nan, "b": (1, 2.5), "c": float("inf")})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2.5], "c": None}


def test_write_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = write_png(tmp_path / "p.png", fig)
    assert path.read_bytes().startswith(PNG)


def test_trials_frame_columns_in_contract_order() -> None:
    records = [
        rec(1, "PRUNED", epsilon=2.0),
        rec(0, "COMPLETE", 0.8, epsilon=0.0),
        rec(2, "FAIL", epsilon=9.0),
    ]
    frame = trials_frame(records, ["epsilon"])
    assert list(frame.columns[:8]) == [
        "number",
        "state",
        "value",
        "params_epsilon",
        "duration_s",
        "pruned_epoch",
        "fail_reason",
        "fail_epoch",
    ]
    seeds = ["seeds", "value_std", "value_se", "delta_baseline", "delta_baseline_se"]
    assert list(frame.columns[8:13]) == seeds
    assert list(frame.columns[13:]) == ["val_acc", "test_acc"]  # trial duration_s not repeated
    assert list(frame["number"]) == [0, 1, 2]
    assert list(frame["state"]) == ["COMPLETE", "PRUNED", "FAIL"]
    assert frame.loc[1, "pruned_epoch"] == 3 and frame.loc[2, "fail_epoch"] == 2
    assert frame.loc[2, "fail_reason"].startswith("diverged")
    assert math.isnan(frame.loc[1, "value"])


def test_best_record_respects_direction_and_ignores_unfinished() -> None:
    records = [rec(0, value=0.5), rec(1, value=0.9), rec(2, "PRUNED"), rec(3, value=0.9)]
    assert best_record(records, "maximize").number == 1  # ties: the earlier trial
    assert best_record(records, "minimize").number == 0
    assert best_record([rec(0, "FAIL")], "maximize") is None
    assert best_record([], "maximize") is None


def test_importances_graceful_for_few_trials_and_one_param() -> None:
    one = load_study("smoke")
    assert importances(one, []) == {}
    assert importances(one, [rec(0, value=0.5, epsilon=0.0)]) == {}
    two = [rec(0, value=0.5, epsilon=0.0), rec(1, value=0.6, epsilon=1.0)]
    assert importances(one, two) == {"epsilon": 1.0}


def test_importances_of_a_multi_parameter_study() -> None:
    study = load_study("full")
    records = [
        rec(i, value=0.5 + 0.04 * i, alpha=1.0, beta=8.0, epsilon=float(i), temperature=4.0)
        for i in range(10)
    ]
    imp = importances(study, records)
    assert set(imp) == {"alpha", "beta", "epsilon", "temperature"}
    assert max(imp, key=imp.get) == "epsilon"
    assert sum(imp.values()) == pytest.approx(1.0)


def test_write_search_outputs_one_parameter_study(tmp_path: Path) -> None:
    study = load_study("smoke")
    records = [
        rec(0, value=0.7, epsilon=0.0),
        rec(1, value=0.6, epsilon=5.0),
        rec(2, "PRUNED", epsilon=9.0),
        rec(3, "FAIL", epsilon=1.0),
        TrialRecord(number=4, state="RUNNING", value=None, params={"epsilon": 2.0}),
    ]
    written = write_search_outputs(study, records, tmp_path, overrides={"seed": 3})
    names = sorted(p.name for p in written)
    assert names == [
        "accuracy_vs_epsilon.png",
        "best.json",
        "importance.csv",
        "learning_curves.png",
        "optimization_history.png",
        "trial_seeds.csv",
        "trials.csv",
    ]
    for name in names:
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes().startswith(PNG)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["number"] == 0 and best["params"] == {"epsilon": 0.0} and best["value"] == 0.7
    beta = load_study("eps_sweep").space.fixed_values()["beta"]
    assert best["config"]["seed"] == 3 and best["config"]["beta"] == beta
    assert best["trials"] == {"complete": 2, "pruned": 1, "fail": 1, "running": 1, "waiting": 0}
    assert "--set epsilon=0.0" in best["command"] and "--set seed=3" in best["command"]
    assert pd.read_csv(tmp_path / "trials.csv")["state"].tolist()[-1] == "RUNNING"
    assert pd.read_csv(tmp_path / "importance.csv").to_dict("records") == [
        {"param": "epsilon", "importance": 1.0}
    ]


def test_write_search_outputs_without_trials_or_plots(tmp_path: Path) -> None:
    study = load_study("full")
    written = write_search_outputs(study, [], tmp_path, plots=False)
    assert sorted(p.name for p in written) == ["best.json", "trial_seeds.csv", "trials.csv"]
    assert json.loads((tmp_path / "best.json").read_text())["params"] is None
    written = write_search_outputs(study, [rec(0, "PRUNED", alpha=1.0)], tmp_path)
    assert "accuracy_vs_alpha.png" not in {p.name for p in written}  # four parameters: no curve
    assert pd.read_csv(tmp_path / "importance.csv").empty


def test_train_command_reproduces_the_config() -> None:
    cfg = TrainConfig(epsilon=2.5, milestones=(3, 5), schedule="multistep", amp=True)
    command = train_command(cfg)
    assert command.startswith("dgkd-train ")
    assert "--set epsilon=2.5" in command and "--set milestones=3,5" in command
    assert "--set amp=true" in command and "alpha" not in command
    from dgkd.config import parse_overrides

    items = [part for part in command.split() if "=" in part]
    assert TrainConfig().replace(**parse_overrides(items)) == cfg


def test_several_parameters_get_importance_and_slice_plots(tmp_path: Path) -> None:
    study = load_study("full")
    names = [p.name for p in study.space.searched()]
    records = []
    for n in range(6):
        params = {k: float(1 + (n * (i + 1)) % 5) for i, k in enumerate(names)}
        records.append(rec(n, "COMPLETE", 0.5 + n / 100, **params))
        records[-1].curve = {1: 0.4, 2: 0.5 + n / 100}
    written = {p.name for p in write_search_outputs(study, records, tmp_path)}
    assert {"param_importances.png", "slice.png", "learning_curves.png"} <= written
    assert not any(name.startswith("accuracy_vs_") for name in written)
    for name in ("param_importances.png", "slice.png", "learning_curves.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)

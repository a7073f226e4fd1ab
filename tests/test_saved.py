"""``dgkd.load_run``: a saved run's student, config and data splits, so that evaluating it gives
the run's metrics back; from a ``dgkd-train --out`` directory and from a search's."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import dgkd
from dgkd.cli import search_main, train_main
from dgkd.config import ConfigError, TrainConfig
from dgkd.data import load_splits

KEYS = ("val_acc", "test_acc", "test_agreement", "test_ece", "train_nc1")


def test_load_splits_defaults_are_the_configs() -> None:
    defaults = inspect.signature(load_splits).parameters
    cfg = TrainConfig()
    for name in ("val_fraction", "split_seed", "val_pool", "test_pool"):
        assert defaults[name].default == getattr(cfg, name), name


def test_a_dgkd_train_run_evaluates_to_its_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # The old protocol (val_pool 0) carves val_fraction of the training set: the split matters.
    argv = ["--set", "epochs=2", "--set", "teacher_epochs=2", "--set", "val_pool=0",
            "--set", "test_pool=400", "--set", "val_fraction=0.3", "--set", "seed=5"]  # fmt: skip
    assert train_main([*argv, "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)["metrics"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_classes"] == 10 and saved["input_shape"] == [40]
    run = dgkd.load_run(out)
    assert isinstance(run, dgkd.SavedRun)
    assert run.config.val_fraction == 0.3 and run.config.seed == 5
    assert len(run.splits.val_y) == 1200  # 0.3 of the 4000 published training examples
    assert not run.model.training
    again = run.evaluate()
    for key in KEYS:
        assert again[key] == pytest.approx(printed[key], abs=1e-6), key
        assert run.metrics[key] == pytest.approx(printed[key], abs=1e-6), key


def test_a_search_directory_gives_each_seed_of_its_best_trial(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--quiet", "--study", "smoke", "--trials", "2", "--workers"]
    assert search_main([*argv, "1"]) == 0
    folder = tmp_path / "smoke"
    best = json.loads((folder / "best.json").read_text())
    for seed in (0, 3):
        run = dgkd.load_run(folder, seed=seed)
        assert run.config.seed == seed and run.config.epsilon == best["config"]["epsilon"]
        again = run.evaluate()
        for key in KEYS:
            assert again[key] == pytest.approx(best["seed_metrics"][seed][key], abs=1e-6), key
    assert dgkd.load_run(folder).config.seed == best["student_seed"] == 0
    with pytest.raises(ConfigError, match="no student of seed 9"):
        dgkd.load_run(folder, seed=9)
    with pytest.raises(ConfigError, match="not a saved run"):
        dgkd.load_run(tmp_path / "nothing")


def test_load_splits_without_arguments_is_the_default_runs() -> None:
    cfg = TrainConfig(val_pool=0, test_pool=0)
    from dgkd.train import splits_for

    ours, theirs = load_splits(val_pool=0, test_pool=0), splits_for(cfg)
    assert len(ours.val_y) == len(theirs.val_y) == 800
    assert bool((ours.val_x == theirs.val_x).all())

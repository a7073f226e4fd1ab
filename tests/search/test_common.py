"""Tests for what both backends share: records and states, the resume check, the budget, the
registry and the one place options are validated."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dgkd.config import TrainConfig
from dgkd.search import SearchInputError, SearchOptions, TrialRecord, TrialState, make_options
from dgkd.search.common import (
    base_config,
    check_signature,
    grid_size,
    signature,
    trial_seeds,
    trial_total,
)
from dgkd.search.export import write_search_outputs
from dgkd.search.records import option_default
from dgkd.search.registry import backend_names, get_backend
from dgkd.study import Study, load_study


def test_trial_state_is_written_as_its_name(tmp_path: Path) -> None:
    study = load_study("smoke")
    records = [
        TrialRecord(0, "COMPLETE", 0.5, {"epsilon": 1.0}, metrics={"val_acc": 0.5}),
        TrialRecord(1, TrialState.PRUNED, None, {"epsilon": 2.0}, pruned_epoch=1),
    ]
    assert records[0].state is TrialState.COMPLETE  # a plain string becomes the enum
    assert f"{records[1].state}" == "PRUNED"
    write_search_outputs(study, records, tmp_path, plots=False)
    assert list(pd.read_csv(tmp_path / "trials.csv")["state"]) == ["COMPLETE", "PRUNED"]
    counts = json.loads((tmp_path / "best.json").read_text())["trials"]
    assert counts == {"complete": 1, "pruned": 1, "fail": 0, "running": 0, "waiting": 0}


def test_signature_mismatch_names_what_changed() -> None:
    study = load_study("smoke")
    opts = SearchOptions(trials=1, out_dir=Path("x"))
    wanted = signature(study, opts)
    check_signature({}, wanted, holder="h")  # nothing stored: nothing to compare
    check_signature({"direction": "maximize"}, wanted, holder="h")  # only what is stored
    local = signature(study, SearchOptions(1, Path("x"), overrides={"device": "cpu"}))
    check_signature(wanted, local, holder="h")  # local-only fields may differ
    changed = signature(study, SearchOptions(1, Path("x"), overrides={"epochs": 3}))
    with pytest.raises(SearchInputError, match=r"^h with another config \(epochs 2, now 3\);"):
        check_signature(wanted, changed, holder="h")
    with pytest.raises(SearchInputError, match="another metric test_acc"):
        check_signature({**wanted, "metric": "test_acc"}, wanted, holder="h")
    with pytest.raises(SearchInputError, match=r"another search space; .* --fresh"):
        check_signature({**wanted, "space": {}}, wanted, holder="h")


def test_grid_size_caps_the_total(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        'sampler = "grid"\n[space.epsilon]\ntype = "categorical"\nchoices = [0.0, 1.0, 2.0]\n'
    )
    study = load_study(path)
    assert grid_size(study) == 3 and grid_size(load_study("smoke")) is None
    assert trial_total(study, SearchOptions(trials=10, out_dir=tmp_path)) == 3
    assert trial_total(study, SearchOptions(trials=2, out_dir=tmp_path)) == 2


def test_registry_and_options_defaults(tmp_path: Path, usable_cores: Callable[[int], None]) -> None:
    usable_cores(3)
    assert backend_names() == ("optuna", "ray")
    assert get_backend("ray").uses_cluster and not get_backend("optuna").uses_cluster
    with pytest.raises(SearchInputError, match="unknown backend 'x'; choose one of: optuna, ray"):
        get_backend("x")
    study = load_study("smoke")
    opts = make_options(study, out=tmp_path)
    assert opts.backend == option_default("backend") == "optuna"
    assert (opts.workers, opts.cpus_per_trial, opts.gpus_per_trial) == (3, 1.0, 0.0)
    assert opts.trials == study.trials and opts.out_dir == tmp_path / "smoke"
    ray = make_options(study, out=tmp_path, backend="ray", cpus_per_trial=2, gpus_per_trial=0.5)
    assert (ray.cpus_per_trial, ray.gpus_per_trial) == (2.0, 0.5)
    with pytest.raises(SearchInputError, match="--cpus-per-trial applies to --backend ray only"):
        make_options(study, cpus_per_trial=2)
    with pytest.raises(SearchInputError, match="--gpus-per-trial must be >= 0"):
        make_options(study, backend="ray", gpus_per_trial=-1)


def test_make_options_resolves_the_base_config_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --set overrides are checked once per search, in make_options; what needs the base
    config after that reads it from the options, which still pickle (spawned workers get them)."""
    from dgkd.search.optuna.backend import trial_threads

    calls: list[dict[str, Any]] = []
    check = Study.check_overrides

    def counted(self: Study, overrides: dict[str, Any]) -> TrainConfig:
        calls.append(dict(overrides))
        return check(self, overrides)

    monkeypatch.setattr(Study, "check_overrides", counted)
    study = load_study("smoke")
    set_ = {"epochs": 3, "seed": 7, "threads": 2}
    opts = make_options(study, out=tmp_path, overrides=set_, n_seeds=2, workers=1)
    assert calls == [set_] and opts.base == check(study, set_)
    assert trial_seeds(study, opts) == [7, 8] == signature(study, opts)["seeds"]
    assert trial_threads(study, opts) == 2 and base_config(study, opts) is opts.base
    assert len(calls) == 1
    again = pickle.loads(pickle.dumps(opts))
    assert again == opts and again.base == opts.base
    # Options built directly (no make_options) resolve it where it is needed.
    assert base_config(study, SearchOptions(1, tmp_path, overrides=set_)) == opts.base
    assert len(calls) == 2

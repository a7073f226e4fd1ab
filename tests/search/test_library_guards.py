"""Version guards: the private Optuna and Ray names the package relies on still exist and mean
what it assumes, and the dependency bounds stop at the next major versions.

pyproject.toml bounds optuna to <6 and ray to <3; within those, a minor release may still rename
a private name. These tests fail loudly, naming the name, before a search silently misbehaves.
"""

from __future__ import annotations

import inspect
import logging
import tomllib
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dependencies_stop_below_the_next_major() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = {d.split(">")[0].split("<")[0]: d for d in deps}
    assert "<6" in spec["optuna"] and "<3" in spec["ray[tune]"], spec


def test_optuna_private_names() -> None:
    from optuna.storages import JournalStorage

    # dgkd.search.optuna.storage._JournalStorage overrides these two to defer Ctrl-C.
    for name, params in (("_write_log", ["self", "op_code", "extra_fields"]),
                         ("_sync_with_backend", ["self"])):  # fmt: skip
        method = getattr(JournalStorage, name, None)
        assert method is not None, f"optuna.storages.JournalStorage.{name} is gone"
        assert list(inspect.signature(method).parameters) == params, name
    # dgkd.search.optuna.recovery fails a trial by its storage id.
    trial = optuna.trial.create_trial(value=1.0)
    assert hasattr(trial, "_trial_id"), "optuna FrozenTrial._trial_id is gone"
    # best.json's importances, the slice plot and the learning curves.
    assert callable(optuna.visualization.matplotlib.plot_slice)
    assert callable(optuna.storages.RetryHeartbeatStaleTrialCallback)


def test_ray_private_names() -> None:
    pytest.importorskip("ray")
    from ray.tune.result_grid import ResultGrid
    from ray.tune.search.optuna import OptunaSearch

    from dgkd.search.ray.searcher import ray_classes

    searcher = ray_classes()["_Searcher"](
        space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="m", mode="max"
    )
    for name in ("_ot_study", "_ot_trials", "_completed_trials", "_space"):
        assert hasattr(searcher, name), f"ray OptunaSearch.{name} is gone"
    assert isinstance(searcher._study(), optuna.Study)
    for hook in ("on_trial_result", "on_trial_complete"):
        assert hook in vars(OptunaSearch), f"OptunaSearch.{hook} moved"
    assert "_experiment_analysis" in inspect.getsource(ResultGrid.__init__), (
        "ray ResultGrid._experiment_analysis is gone (dgkd.search.ray.results reads trials there)"
    )
    from ray._raylet import (  # type: ignore[attr-defined]  # dgkd.search.ray.cluster
        AuthenticationMode,
        AuthenticationTokenLoader,
        Config,
        get_authentication_mode,
    )

    assert AuthenticationMode.TOKEN and AuthenticationTokenLoader and Config
    assert callable(get_authentication_mode)
    import ray.train._internal.storage as storage  # its per-checkpoint INFO line is silenced

    assert storage.logger is logging.getLogger("ray.train._internal.storage")

"""``--mlflow``: every trial logged to a real local MLflow file store (config, metrics by epoch,
final metrics, state). MLflow is an optional extra: skipped without it, except under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dgkd.cli import search_main

if os.environ.get("CI") == "true":
    import mlflow  # noqa: F401  # under CI the extra is installed: its absence is a failure
else:
    pytest.importorskip("mlflow")


def test_every_trial_is_an_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    # MLflow 3.x refuses a new file store unless asked: the command asks for it.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "mlruns").as_uri()  # a file store
    argv = ["--out", str(tmp_path / "runs"), "--quiet", "--study", "smoke", "--trials", "3"]
    assert search_main([*argv, "--mlflow", store]) == 0
    out, err = capfd.readouterr()
    assert "INFO" not in out + err and "mlflow" not in err.lower(), err
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1", "trial-2"]
    import pandas as pd

    trials = pd.read_csv(tmp_path / "runs" / "smoke" / "trials.csv").set_index("number")
    for run in runs:
        number = int(run.data.tags["dgkd.trial"])
        assert run.data.params["epochs"] == "2" and "epsilon" in run.data.params
        assert run.data.params["epsilon"] == str(trials.loc[number, "params_epsilon"])
        curve = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in curve] == [1, 2]
        state = trials.loc[number, "state"]
        assert run.data.tags["dgkd.state"] == state
        if state == "COMPLETE":
            assert run.info.status == "FINISHED"
            expected = trials.loc[number, "test_acc"]
            assert run.data.metrics["final_test_acc"] == pytest.approx(expected)


def test_the_experiment_exists_before_the_workers_open_their_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers creating the experiment at once in a file store made two experiments of one
    name, and the trials split between them (seen on a loaded machine): the command creates it
    once, before any worker starts."""
    from mlflow.tracking import MlflowClient

    from dgkd.search import orchestrate
    from dgkd.study import load_study

    store = (tmp_path / "mlruns").as_uri()
    seen: list[object] = []

    class Started(Exception):
        pass

    class Backend:
        def preflight(self, study: object, opts: object) -> None:
            pass

        def run(self, study: object, opts: object, log: object) -> list[object]:
            seen.append(MlflowClient(tracking_uri=store).get_experiment_by_name("smoke"))
            raise Started

    study = load_study("smoke")
    opts = orchestrate.make_options(study, out=tmp_path / "runs", trials=2, mlflow=store)
    monkeypatch.setattr(orchestrate, "get_backend", lambda name: Backend())
    with pytest.raises(Started):
        orchestrate.run_search(study, opts, log=lambda _: None)
    assert len(seen) == 1 and seen[0] is not None

"""``--mlflow URI`` on dgkd-train and dgkd-ablate (dgkd-search's: tests/search/test_tracking.py):
the example every ``--help`` gives works with the installed MLflow, each run is read back with
MLflow's client, and no MLflow or alembic log line reaches the terminal. MLflow is an optional
extra: skipped without it, except under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import TINY_POOL_ARGS

from dgkd.cli import ablate_main, train_main
from dgkd.cliparts import MLFLOW_EXAMPLE

if os.environ.get("CI") == "true":
    import mlflow  # noqa: F401  # under CI the extra is installed: its absence is a failure
else:
    pytest.importorskip("mlflow")

TINY = ["--set", "epochs=2", "--set", "teacher_epochs=2", *TINY_POOL_ARGS]


def _quiet(capfd: pytest.CaptureFixture[str]) -> str:
    out, err = capfd.readouterr()
    for word in ("INFO", "alembic", "mlflow.store", "Warning"):
        assert word not in out + err, out + err
    return out


def test_help_example_logs_train_and_ablate_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the example is relative: sqlite:///runs/mlflow.db
    assert MLFLOW_EXAMPLE == "sqlite:///runs/mlflow.db"
    assert train_main([*TINY, "--json", "--set", "seed=3", "--mlflow", MLFLOW_EXAMPLE]) == 0
    _quiet(capfd)
    client = MlflowClient(tracking_uri=MLFLOW_EXAMPLE)
    experiment = client.get_experiment_by_name("dgkd-train")
    assert experiment is not None and (tmp_path / "runs" / "mlflow.db").is_file()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "seed-3" and run.info.status == "FINISHED"
    assert run.data.params["seed"] == "3" and run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert 0 < run.data.metrics["final_test_acc"] <= 1

    argv = ["--variants", "kd", "--seeds", "1", "--teachers", "1", "--workers", "1", "--quiet",
            "--out", str(tmp_path / "runs"), *TINY, "--mlflow", MLFLOW_EXAMPLE]  # fmt: skip
    assert ablate_main(argv) == 0
    _quiet(capfd)
    experiment = client.get_experiment_by_name("dgkd-ablate/default")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["full-teacher0-seed0", "kd-teacher0-seed0"]
    assert all(r.info.status == "FINISHED" and "final_test_acc" in r.data.metrics for r in runs)
    assert ablate_main(argv) == 0  # finished cells are reused, and not logged twice
    assert "0 runs logged" in capfd.readouterr().err
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_an_unusable_uri_is_one_line_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for main, argv in ((train_main, TINY), (ablate_main, ["--variants", "kd", *TINY])):
        assert main([*argv, "--out", str(tmp_path / "o"), "--mlflow", "nonsense://x"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--mlflow nonsense://x" in err[0], err
        assert not (tmp_path / "o").exists()


def test_suite_logs_one_experiment_per_setup(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    suite = tmp_path / "two.toml"
    suite.write_text(
        '[[setup]]\nname = "w24"\n[[setup]]\nname = "w8"\nset = { student_width = 8 }\n'
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--suite", str(suite), "--variants", "kd", "--seeds", "1", "--teachers", "1",
            "--workers", "1", "--quiet", "--out", str(tmp_path / "runs"), *TINY,
            "--mlflow", uri]  # fmt: skip
    assert ablate_main(argv) == 0
    _quiet(capfd)
    client = MlflowClient(tracking_uri=uri)
    for setup in ("w24", "w8"):
        experiment = client.get_experiment_by_name(f"dgkd-ablate/two/{setup}")
        assert experiment is not None
        names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
        assert names == ["full-teacher0-seed0", "kd-teacher0-seed0"]

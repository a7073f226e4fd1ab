"""An interrupted Optuna trial's re-run resumes its checkpoint: it trains only the epochs left,
reports every epoch, and ends with the value, metrics and history of an uninterrupted trial.
A trial's checkpoint directory is taken over by its re-run, kept on interruption and deleted
otherwise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from dgkd import checkpoint as ckpt
from dgkd.cli import search_main
from dgkd.search.optuna.recovery import retried_trial
from dgkd.search.records import TrialRecord, TrialState
from dgkd.search.trialfiles import (
    CHECKPOINTS_DIR,
    checkpoint_path,
    keep_best_student,
    trial_checkpoint,
)

# One process: the tests patch what a trial reports and count the epochs it trains, here.
ARGS = ["--quiet", "--study", "smoke", "--trials", "1", "--seeds", "2", "--workers", "1"]
SETS = ["--set", "epochs=5", "--set", "checkpoint_every=2"]


def _search(out: Path) -> int:
    return search_main(["--out", str(out), *ARGS, *SETS])


def _journal(out: Path) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(out / "smoke" / "journal.log"))
    return optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(backend))


def _timeless(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "duration_s"}


def test_an_interrupted_trial_is_resumed_by_its_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count_trained_epochs: Callable[[], list[int]]
) -> None:
    assert _search(tmp_path / "plain") == 0
    (plain,) = _journal(tmp_path / "plain").trials

    # SIGTERM in a worker is a KeyboardInterrupt once the journal write of a report is done.
    report = optuna.trial.Trial.report

    def interrupted_at_3(self: optuna.trial.Trial, value: float, step: int) -> None:
        report(self, value, step)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(optuna.trial.Trial, "report", interrupted_at_3)
    out = tmp_path / "cut"
    assert _search(out) == 130
    assert list(checkpoint_path(out / "smoke", 0).glob(ckpt.STATE_GLOB))
    monkeypatch.setattr(optuna.trial.Trial, "report", report)

    trained = count_trained_epochs()
    assert _search(out) == 0
    assert trained == [4, 5]  # epochs 1-3 came from trial 0's checkpoint
    cut, rerun = _journal(out).trials
    assert cut.user_attrs["interrupted"] and rerun.user_attrs["retry_of"] == 0
    assert rerun.state == optuna.trial.TrialState.COMPLETE and rerun.value == plain.value
    assert rerun.intermediate_values == plain.intermediate_values  # every epoch reported
    for key in ("test_acc", "val_acc", "train_loss", "train_nc1"):
        assert rerun.user_attrs[key] == plain.user_attrs[key], key
    for ours, theirs in zip(
        *(t.system_attrs["dgkd_seed_metrics"] for t in (rerun, plain)), strict=True
    ):
        assert _timeless(ours) == _timeless(theirs)
    history = pd.read_csv(out / "smoke" / "history" / "trial_1.csv")
    assert history.equals(pd.read_csv(tmp_path / "plain" / "smoke" / "history" / "trial_0.csv"))
    assert not any((out / "smoke" / CHECKPOINTS_DIR).glob("*"))  # the ended trial's went


def test_the_retried_trial_comes_from_retry_of_or_from_a_heartbeat_retry() -> None:
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={"retry_of": 1})
    assert retried_trial(study.ask()) == 1
    assert retried_trial(study.ask()) is None
    # Optuna's heartbeat retry copies the user attrs (an older retry_of) and records its own.
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            user_attrs={"retry_of": 1},
            system_attrs={"failed_trial": 0, "retry_history": [0, 4]},
        )
    )
    assert retried_trial(study.ask()) == 4


def test_a_trial_checkpoint_is_taken_over_kept_on_interrupt_and_deleted_otherwise(
    tmp_path: Path,
) -> None:
    first = checkpoint_path(tmp_path, 0)
    first.mkdir(parents=True)
    (first / "population-x.pt").write_bytes(b"state")
    with pytest.raises(KeyboardInterrupt), trial_checkpoint(tmp_path, 1, retry_of=0) as path:
        assert path == checkpoint_path(tmp_path, 1) and (path / "population-x.pt").is_file()
        raise KeyboardInterrupt  # kept for the trial that re-runs trial 1
    assert not first.exists() and (checkpoint_path(tmp_path, 1) / "population-x.pt").is_file()
    with pytest.raises(ValueError), trial_checkpoint(tmp_path, 2, retry_of=1):
        raise ValueError("the trial failed")  # failed for good: not re-run
    assert not checkpoint_path(tmp_path, 2).exists() and not checkpoint_path(tmp_path, 1).exists()
    with trial_checkpoint(tmp_path, 3, retry_of=None) as path:
        path.mkdir(parents=True)
    assert not path.exists()


def test_the_exports_delete_checkpoints_of_trials_that_will_not_run_again(tmp_path: Path) -> None:
    for number in range(3):
        checkpoint_path(tmp_path, number).mkdir(parents=True)
    records = [
        TrialRecord(0, TrialState.COMPLETE, 1.0, {}),
        TrialRecord(1, TrialState.FAIL, None, {}, fail_reason="interrupted: stopped by SIGTERM"),
        TrialRecord(2, TrialState.RUNNING, None, {}),
    ]
    keep_best_student(tmp_path, records, best=0)
    assert [checkpoint_path(tmp_path, n).exists() for n in range(3)] == [False, True, True]

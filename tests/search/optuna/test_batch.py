"""``dgkd-search --batch N``: N trials asked at once and trained as one population, each with
the parameters, numbers and metrics it gets one at a time; a batch interrupted by SIGTERM
re-enqueues every trial of it, and their re-run resumes the batch's checkpoint."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from dgkd import checkpoint as ckpt
from dgkd.cli import search_main
from dgkd.search.optuna.workers import Worker
from dgkd.search.trialfiles import checkpoint_path

# One process: the tests patch what a trial reports and count the epochs it trains, here.
ARGS = ["--quiet", "--study", "smoke", "--seeds", "2", "--confirm-top", "0", "--workers", "1"]


def _search(out: Path, *args: str) -> int:
    return search_main(["--out", str(out), *ARGS, *args])


def _journal(out: Path) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(out / "smoke" / "journal.log"))
    return optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(backend))


def _timeless(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "duration_s"} for r in rows]


def test_a_batched_search_matches_one_trial_at_a_time(tmp_path: Path) -> None:
    assert _search(tmp_path / "one", "--trials", "5", "--batch", "1") == 0
    assert _search(tmp_path / "batch", "--trials", "5", "--batch", "3") == 0  # 3, then 2
    one, batch = (_journal(tmp_path / d).trials for d in ("one", "batch"))
    assert len(one) == len(batch) == 5
    for a, b in zip(one, batch, strict=True):
        assert (a.number, a.params, a.state) == (b.number, b.params, b.state)
        assert a.value == b.value and a.intermediate_values == b.intermediate_values
        assert _timeless(a.system_attrs["dgkd_seed_metrics"]) == _timeless(
            b.system_attrs["dgkd_seed_metrics"]
        )
    frames = [pd.read_csv(tmp_path / d / "smoke" / "trial_seeds.csv") for d in ("one", "batch")]
    assert frames[0].drop(columns="duration_s").equals(frames[1].drop(columns="duration_s"))


def test_an_interrupted_batch_is_reenqueued_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count_trained_epochs: Callable[[], list[int]]
) -> None:
    sets = ["--set", "epochs=5", "--set", "checkpoint_every=2"]
    assert _search(tmp_path / "plain", "--trials", "3", "--batch", "3", *sets) == 0
    plain = _journal(tmp_path / "plain").trials

    report = optuna.trial.Trial.report

    def interrupted_at_3(self: optuna.trial.Trial, value: float, step: int) -> None:
        report(self, value, step)
        if step == 3:  # SIGTERM is a KeyboardInterrupt in the thread that trains the batch
            raise KeyboardInterrupt

    monkeypatch.setattr(optuna.trial.Trial, "report", interrupted_at_3)
    out = tmp_path / "cut"
    assert _search(out, "--trials", "3", "--batch", "3", *sets) == 130
    cut = _journal(out).trials
    assert [t.state for t in cut] == [optuna.trial.TrialState.FAIL] * 3 + [
        optuna.trial.TrialState.WAITING
    ] * 3
    assert [t.user_attrs.get("retry_of") for t in cut[3:]] == [0, 1, 2]
    assert list(checkpoint_path(out / "smoke", 0).glob(ckpt.STATE_GLOB))  # the batch's state
    monkeypatch.setattr(optuna.trial.Trial, "report", report)

    trained = count_trained_epochs()
    assert _search(out, "--trials", "3", "--batch", "3", *sets) == 0
    assert trained == [4, 5]  # epochs 1-3 came from the checkpoint of the cut batch
    reruns = _journal(out).trials[3:]
    for rerun, first in zip(reruns, plain, strict=True):
        assert rerun.state == optuna.trial.TrialState.COMPLETE
        assert rerun.params == first.params and rerun.value == first.value
        assert rerun.intermediate_values == first.intermediate_values
    assert not (out / "smoke" / "checkpoints").exists() or not any(
        (out / "smoke" / "checkpoints").iterdir()
    )


def test_a_signal_while_a_batch_records_its_trials_ends_the_search_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM when the batch has trained and its threads are recording their trials' ends: the
    search stops (exit 130) once both trials are COMPLETE, not with one left RUNNING. Before
    Python 3.13, a ``Thread.join`` cut by the signal marks the thread stopped while it still
    runs (CPython gh-90882), and the worker let its trial threads go."""
    finish = Worker._finish
    both = threading.Barrier(2, timeout=120)  # a broken barrier fails the test, never hangs it
    recorded: list[int] = []

    def signalled_finish(self: Worker, trial: optuna.Trial, outcome: Any) -> float:
        if both.wait() == 0:  # both trial threads are here: the main thread waits for them
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        # Both still recording when the main thread is interrupted, the first one longer: a
        # cut join of the first thread would not wait for it, the second's join would not cover it
        time.sleep(1.5 if trial.number == 0 else 0.5)
        value = finish(self, trial, outcome)
        recorded.append(trial.number)
        return value

    monkeypatch.setattr(Worker, "_finish", signalled_finish)
    assert _search(tmp_path, "--trials", "4", "--batch", "2") == 130
    assert sorted(recorded) == [0, 1]  # when the search returned
    trials = _journal(tmp_path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2

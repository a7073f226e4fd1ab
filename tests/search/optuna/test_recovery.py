"""Recovery at start is idempotent whatever moment a worker was killed at (no lost re-run, no
double re-run), checked on the storage directly."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from dgkd.search.optuna.recovery import recover


def _dead_owner() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:0"


def _trial(study: optuna.Study, epsilon: float, **attrs: object) -> int:
    storage = study._storage
    trial_id = storage.create_new_trial(study._study_id)
    dist = optuna.distributions.FloatDistribution(0.0, 10.0)
    storage.set_trial_param(trial_id, "epsilon", dist.to_internal_repr(epsilon), dist)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    return storage.get_trial_number_from_id(trial_id)


def _reruns(study: optuna.Study, number: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.user_attrs.get("retry_of") == number]


def test_killed_after_enqueueing_its_rerun_is_not_enqueued_twice() -> None:
    study = optuna.create_study()
    running = _trial(study, 4.0, worker=_dead_owner())
    study.enqueue_trial({"epsilon": 4.0}, user_attrs={"retry_of": running})  # its worker's
    assert recover(study, study._storage, journal=True) == [running]
    assert study.trials[running].state == TrialState.FAIL
    assert len(_reruns(study, running)) == 1
    assert recover(study, study._storage, journal=True) == []  # again: nothing more
    assert len(_reruns(study, running)) == 1


def test_marked_interrupted_without_a_rerun_gets_one() -> None:
    study = optuna.create_study()
    lost = _trial(study, 1.25, interrupted=True)
    study._storage.set_trial_state_values(study.trials[lost]._trial_id, TrialState.FAIL)
    recover(study, study._storage, journal=True)
    (rerun,) = _reruns(study, lost)
    assert rerun.state == TrialState.WAITING
    assert rerun.system_attrs["fixed_params"] == {"epsilon": 1.25}  # as enqueue_trial stores it
    recover(study, study._storage, journal=True)
    assert len(_reruns(study, lost)) == 1


def test_a_dead_owners_trial_without_a_rerun_is_failed_and_enqueued_once() -> None:
    study = optuna.create_study()
    running = _trial(study, 7.0, worker=_dead_owner())
    recover(study, study._storage, journal=True)
    recover(study, study._storage, journal=True)
    assert study.trials[running].state == TrialState.FAIL
    assert len(_reruns(study, running)) == 1

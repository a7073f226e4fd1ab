"""Trials whose process stopped: found by their owner, failed, and their parameters re-enqueued.

The journal has no heartbeat, so every trial records its process as ``user_attrs["worker"]``
(``host:pid:start``). On start, a RUNNING trial whose process is gone is failed and its
parameters enqueued again (an RDB also does this by heartbeat, later).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState as OptunaState

from dgkd.search.records import INTERRUPTED

__all__ = ["recover", "retried_trial", "worker_id"]

_UNOWNED_STALE_S = 60.0  # a RUNNING trial with no owner recorded this long is abandoned
_HOST = socket.gethostname()


# --- owners -----------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), to tell a reused pid from the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def worker_id() -> str:
    """``host:pid:start`` of this process, recorded on each trial it runs."""
    return f"{_HOST}:{os.getpid()}:{_start_time(os.getpid()) or 0}"


def _owner_alive(owner: str) -> bool | None:
    """Whether the process that owns a trial runs; None when it is on another host."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != _HOST:
        return None
    if owner == worker_id():
        return False  # this process is only starting its workers: not running that trial
    if start != "0" and Path("/proc").is_dir():
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retried_trial(trial: optuna.Trial) -> int | None:
    """The number of the trial ``trial`` re-runs: one interrupted (``retry_of``, set here and by
    the workers) or one whose RDB heartbeat stopped (Optuna's ``retry_history``); else None.
    Its re-run resumes its checkpoint."""
    history = trial.storage.get_trial_system_attrs(trial._trial_id).get("retry_history")
    if history:  # Optuna's retry copies the user attrs too: a retry_of there is older
        return int(history[-1])
    retry_of = trial.user_attrs.get("retry_of")
    return None if retry_of is None else int(retry_of)


def recover(ostudy: optuna.Study, storage: BaseStorage, *, journal: bool) -> list[int]:
    """Fail RUNNING trials whose process is gone and enqueue their parameters again.

    Idempotent whatever moment a worker was killed at: a trial already re-enqueued (by its
    worker, which enqueues first and marks second) is not enqueued twice, and one marked
    interrupted whose re-run was never enqueued gets it now.

    RDB storages also do this by heartbeat; here it is immediate for processes of this host.
    Returns the numbers of the trials failed.
    """
    now = datetime.now()
    failed = []
    trials = ostudy.get_trials(deepcopy=False)
    retried = {n for n in (_retry_target(t) for t in trials) if n is not None}
    for t in trials:  # marked interrupted, but killed before its re-run was enqueued
        if (
            t.state == OptunaState.FAIL
            and t.user_attrs.get("interrupted")
            and t.number not in retried
        ):
            ostudy.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            retried.add(t.number)
    for t in ostudy.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        owner = t.user_attrs.get("worker")
        who = "process " + ":".join(str(owner).split(":")[:2]) if owner else "its process"
        if owner is None:
            started = t.datetime_start or now
            if now - started < timedelta(seconds=_UNOWNED_STALE_S):
                continue
            alive: bool | None = False
        else:
            alive = _owner_alive(str(owner))
        if alive or (alive is None and not journal):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"{INTERRUPTED}: {who} stopped")
            storage.set_trial_state_values(t._trial_id, OptunaState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue
        if t.number not in retried:  # its worker enqueued the re-run before it was killed
            ostudy.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


def _retry_target(t: optuna.trial.FrozenTrial) -> int | None:
    """:func:`retried_trial` of a stored trial."""
    history = t.system_attrs.get("retry_history")
    if history:
        return int(history[-1])
    retry_of = t.user_attrs.get("retry_of")
    return None if retry_of is None else int(retry_of)

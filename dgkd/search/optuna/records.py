"""Optuna trials as backend-neutral records, and the trial counts the budget is made of.

Budget. ``--trials`` is the study's total: finished trials in any state count, except those cut
off by an interruption, which keep their number (state FAIL, ``fail_reason`` "interrupted ...")
and are re-run from the same parameters under a new number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from dgkd.search.records import INTERRUPTED, TrialRecord, TrialState

__all__ = ["occupied", "to_records"]


def _retries(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """``{interrupted trial number: number of the trial re-running its parameters}``."""
    out: dict[int, int] = {}
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:  # RetryHeartbeatStaleTrialCallback
            out[int(history[-1])] = t.number
        elif "retry_of" in t.user_attrs:
            out[int(t.user_attrs["retry_of"])] = t.number
    return out


def _interrupted(t: FrozenTrial, retries: dict[int, int]) -> bool:
    return t.state == OptunaState.FAIL and (
        bool(t.user_attrs.get("interrupted")) or t.number in retries
    )


def occupied(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count toward the total: finished (not interrupted) and running."""
    retries = _retries(trials)
    n = 0
    for t in trials:
        if t.state == OptunaState.RUNNING or (
            t.state.is_finished() and not _interrupted(t, retries)
        ):
            n += 1
    return n


def _fail_reason(t: FrozenTrial, retries: dict[int, int]) -> str:
    """Why a FAIL trial failed; for an interrupted one, by what and which trial re-ran it."""
    ua = t.user_attrs
    reason = str(ua.get("fail_reason", ""))
    if not _interrupted(t, retries):
        return reason or "failed (see the worker's log)"
    why = reason.removeprefix(INTERRUPTED).strip(" :;")
    why = why or ("its heartbeat stopped" if "interrupted" not in ua else "stopped")
    why = why.split("; re-", 1)[0]
    rerun = retries.get(t.number)
    return f"{INTERRUPTED} ({why})" + (f"; re-run as trial {rerun}" if rerun is not None else "")


def to_records(trials: Sequence[FrozenTrial]) -> list[TrialRecord]:
    """Optuna trials as backend-neutral records (final metrics from ``user_attrs``)."""
    retries = _retries(trials)
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = t.user_attrs
        state = TrialState(t.state.name)
        pruned_epoch = ua.get("pruned_epoch", t.last_step) if state == TrialState.PRUNED else None
        metrics = {
            k: (math.nan if v is None else float(v)) for k, v in ua.get("metrics", {}).items()
        }
        out.append(
            TrialRecord(
                number=t.number,
                state=state,
                value=t.value if state == TrialState.COMPLETE else None,
                params=dict(t.params),
                duration_s=t.duration.total_seconds() if t.duration is not None else None,
                pruned_epoch=None if pruned_epoch is None else int(pruned_epoch),
                metrics=metrics,
                fail_reason=_fail_reason(t, retries) if state == TrialState.FAIL else "",
                fail_epoch=ua.get("fail_epoch") if state == TrialState.FAIL else None,
            )
        )
    return out

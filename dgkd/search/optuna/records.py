"""Optuna trials as backend-neutral records, and the trial counts the budget is made of.

Final metrics. Each of ``train()``'s final metrics is a user attribute of its own (``test_acc``
sorts and plots in ``optuna trials``, ``trials_dataframe()`` and the dashboard); the metric by
epoch is the trial's intermediate values. Searches from before this layout kept the metrics in
one ``metrics`` attribute, still read.

Per-seed metrics. The study's metric of each seed is a numeric user attribute of its own
(``seed0_val_acc``, ``seed1_val_acc``, ...), so ``optuna trials --flatten`` shows one short column
per seed; every final metric of every seed is the system attribute ``dgkd_seed_metrics`` (a list
of dicts, one per seed, in the order of the ``seeds`` attribute), which Optuna's tables do not
show. Searches from before kept that list in the ``seed_metrics`` user attribute, still read.

Budget. ``--trials`` is the study's total: finished trials in any state count, except those cut
off by an interruption, which keep their number (state FAIL, ``fail_reason`` "interrupted ...")
and are re-run from the same parameters under a new number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from dgkd.search.records import INTERRUPTED, TrialRecord, TrialState

__all__ = [
    "SEED_METRICS_ATTR",
    "TRIAL_ATTRS",
    "metric_attrs",
    "occupied",
    "seed_attrs",
    "to_records",
]

SEED_METRICS_ATTR = "dgkd_seed_metrics"  # system attribute: every seed's final metrics
_SEED_ATTR = re.compile(r"seed-?\d+_")  # user attributes seed<s>_<metric>: one seed's metric

# User attributes that are not final metrics (the rest, numbers or None, are).
TRIAL_ATTRS = frozenset(
    {
        "worker",
        "fail_reason",
        "fail_epoch",
        "pruned_epoch",
        "interrupted",
        "retry_of",
        "metrics",
        "seeds",
        "seed_metrics",
    }
)


def metric_attrs(user_attrs: dict[str, Any]) -> dict[str, float]:
    """The final metrics among a trial's user attributes (None, i.e. NaN in JSON, as NaN)."""
    nested = user_attrs.get("metrics")
    items = nested.items() if isinstance(nested, dict) else user_attrs.items()
    out = {}
    for k, v in items:
        if k in TRIAL_ATTRS or isinstance(v, bool) or not isinstance(v, int | float | None):
            continue
        if _SEED_ATTR.match(k):
            continue
        out[k] = math.nan if v is None else float(v)
    return out


def seed_attrs(
    seeds: Sequence[int], seed_metrics: Sequence[Mapping[str, float]], metric: str
) -> dict[str, float | None]:
    """The flat user attributes of a trial's seeds: ``seed<s>_<metric>`` each (None for NaN)."""
    out: dict[str, float | None] = {}
    for seed, metrics in zip(seeds, seed_metrics, strict=False):
        value = metrics.get(metric)
        if isinstance(value, int | float):
            out[f"seed{seed}_{metric}"] = float(value) if math.isfinite(value) else None
    return out


def _seed_metrics(t: FrozenTrial) -> list[dict[str, float]]:
    stored = t.system_attrs.get(SEED_METRICS_ATTR, t.user_attrs.get("seed_metrics", ()))
    return [metric_attrs(m) for m in stored if isinstance(m, dict)]


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
        metrics = metric_attrs(ua)
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
                curve={int(k): float(v) for k, v in t.intermediate_values.items()},
                seeds=tuple(int(x) for x in ua.get("seeds", ())),
                seed_metrics=_seed_metrics(t),
            )
        )
    return out

"""What every backend does the same way: the trial body, resume checks, budget, interruption.

A backend differs in how it picks parameters, schedules trials and stores results; what a trial
*does*, what a resumed search must share with the stored one, how many trials a search runs and
what an interrupted search leaves behind are the same everywhere, and live here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from dgkd.search.export import write_search_outputs
from dgkd.search.records import (
    SearchInputError,
    SearchOptions,
    TrialRecord,
    TrialState,
    counts_toward_total,
)

if TYPE_CHECKING:
    from dgkd.config import TrainConfig
    from dgkd.study import Study

__all__ = [
    "LOCAL_FIELDS",
    "EpochHook",
    "Log",
    "TrialOutcome",
    "check_signature",
    "grid_size",
    "is_finite_number",
    "print_line",
    "signature",
    "stop_interrupted",
    "train_trial",
    "trial_total",
]

Log = Callable[[str], None]  # where one-line notices go
EpochHook = Callable[[int, dict[str, float], bool], None]  # (epoch, row, is_last_epoch)

# Config fields that do not change results: a resumed search may differ in them.
LOCAL_FIELDS = ("data_root", "download", "device", "eval_batch_size")
_SIGNATURE_KEYS = ("direction", "metric", "space", "config")


def print_line(line: str) -> None:
    """The default :data:`Log`: the line on stdout, flushed (progress seen through pipes)."""
    print(line, flush=True)


def is_finite_number(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a real, finite number (not a bool, None, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- budget -----------------------------------------------------------------------------------


def grid_size(study: Study) -> int | None:
    """Points of a grid study's space; None for any other sampler."""
    if study.sampler != "grid":
        return None
    return math.prod(len(values) for values in (study.space.grid() or {}).values())


def trial_total(study: Study, opts: SearchOptions) -> int:
    """Trials the search runs to: ``--trials``, or fewer when the grid is smaller."""
    grid = grid_size(study)
    return min(opts.trials, grid) if grid else opts.trials


# --- resume -----------------------------------------------------------------------------------


def signature(study: Study, opts: SearchOptions) -> dict[str, Any]:
    """What a resumed search must share with the stored one (else its trials would not compare):
    metric, direction, space and the base config less the searched and local-only fields."""
    from optuna.distributions import distribution_to_json

    searched = {p.name for p in study.space.searched()}
    cfg = study.check_overrides(opts.overrides).to_dict()
    return {
        "metric": study.metric,
        "direction": study.direction,
        "space": {k: distribution_to_json(d) for k, d in study.space.distributions().items()},
        "config": {k: v for k, v in cfg.items() if k not in searched and k not in LOCAL_FIELDS},
    }


def _mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """What differs between a stored :func:`signature` and the wanted one; keys the stored one
    lacks (a search from before they were recorded) are not compared."""
    for key in _SIGNATURE_KEYS:
        if key not in stored or stored[key] == wanted[key]:
            continue
        old, new = stored[key], wanted[key]
        if key == "space":
            return "search space"
        if key == "config":
            old = old or {}
            diff = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            return f"config ({diff} {old.get(diff)!r}, now {new.get(diff)!r})"
        return f"{key} {old} (now {new})"
    return None


def check_signature(stored: Mapping[str, Any], wanted: Mapping[str, Any], *, holder: str) -> None:
    """Refuse to resume a search stored with another metric, direction, space or config.

    Args:
        stored: The stored signature ({} when nothing is stored).
        wanted: :func:`signature` of the search about to run.
        holder: Who holds the stored one, e.g. ``runs/smoke/journal.log holds study smoke``.

    Raises:
        SearchInputError: with what differs and what to do about it.
    """
    what = _mismatch(stored, wanted)
    if what:
        raise SearchInputError(
            f"{holder} with another {what}; rerun with the same study and --set options, "
            "or add --fresh to move the old one aside"
        )


# --- the trial --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial that ran to its end (or diverged) came out."""

    state: TrialState  # COMPLETE or FAIL
    value: float | None  # the study's metric, finite; None on FAIL
    metrics: dict[str, float] = field(default_factory=dict)  # train()'s final metrics
    fail_reason: str = ""
    fail_epoch: int | None = None  # the epoch a divergence was detected in


def train_trial(cfg: TrainConfig, *, metric: str, on_epoch: EpochHook) -> TrialOutcome:
    """Train ``cfg``, reporting ``metric`` per epoch; a divergence or a non-finite final value
    is a FAIL outcome rather than an exception, the same for every backend.

    Args:
        cfg: The trial's full configuration.
        metric: The study's metric.
        on_epoch: Called as ``on_epoch(epoch, row, is_last)`` after every epoch whose ``metric``
            is finite (epochs are 1-based). It may raise (e.g. ``optuna.TrialPruned``) to stop
            the run; that exception propagates, as does any other error of the run.
    """
    from dgkd.loop import DivergedError
    from dgkd.train import train

    last = cfg.epochs

    def report(epoch: int, row: dict[str, float]) -> None:
        if is_finite_number(row.get(metric)):
            on_epoch(epoch, row, epoch >= last)

    try:
        metrics = dict(train(cfg, report=report).metrics)
    except DivergedError as exc:
        return TrialOutcome(
            TrialState.FAIL, None, fail_reason=f"diverged: {exc}", fail_epoch=exc.epoch
        )
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):
        return TrialOutcome(TrialState.FAIL, None, metrics, fail_reason=f"{metric} is {value}")
    return TrialOutcome(TrialState.COMPLETE, float(value), metrics)


# --- interruption -----------------------------------------------------------------------------


def stop_interrupted(
    study: Study, opts: SearchOptions, records: Sequence[TrialRecord], total: int, log: Log
) -> None:
    """Write what an interrupted search has and say how to continue; the caller re-raises.

    The backend has saved its own state (journal, Tune's experiment), so rerunning the same
    command picks up where this one stopped.
    """
    write_search_outputs(study, records, opts.out_dir, overrides=opts.overrides)
    done = sum(counts_toward_total(r) for r in records)
    log(f"interrupted at {done}/{total} trials; rerun the same command to continue")

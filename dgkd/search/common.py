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

from dgkd.config import NEUTRAL_FIELDS
from dgkd.search.export import write_search_outputs
from dgkd.search.records import (
    SearchInputError,
    SearchOptions,
    TrialRecord,
    TrialState,
    counts_toward_total,
)

if TYPE_CHECKING:
    from pathlib import Path

    from dgkd.checkpoint import Checkpoint
    from dgkd.config import TrainConfig
    from dgkd.study import Study

__all__ = [
    "LOCAL_FIELDS",
    "EpochHook",
    "Log",
    "TrialOutcome",
    "TrialTracking",
    "check_signature",
    "grid_size",
    "is_finite_number",
    "print_line",
    "signature",
    "stop_interrupted",
    "train_trial",
    "trial_seeds",
    "trial_total",
]

Log = Callable[[str], None]  # where one-line notices go
EpochHook = Callable[[int, dict[str, float], bool], None]  # (epoch, row, is_last_epoch)

# Config fields that do not change results: a resumed search may differ in them.
LOCAL_FIELDS = ("data_root", "download", "device", "eval_batch_size", *NEUTRAL_FIELDS)
_SIGNATURE_KEYS = ("backend", "direction", "metric", "space", "config", "seeds")


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


def trial_seeds(study: Study, opts: SearchOptions) -> list[int]:
    """The seeds every trial trains (the same in every trial, so trials compare paired)."""
    return study.trial_seeds(opts.overrides, opts.seeds)


def trial_total(study: Study, opts: SearchOptions) -> int:
    """Trials the search runs to: ``--trials``, or fewer when the grid is smaller."""
    grid = grid_size(study)
    return min(opts.trials, grid) if grid else opts.trials


# --- resume -----------------------------------------------------------------------------------


def signature(study: Study, opts: SearchOptions) -> dict[str, Any]:
    """What a resumed search must share with the stored one (else its trials would not compare):
    backend, metric, direction, space, trial seeds and the base config less the searched and
    local-only fields."""
    from optuna.distributions import distribution_to_json

    searched = {p.name for p in study.space.searched()}
    cfg = study.check_overrides(opts.overrides).to_dict()
    return {
        "backend": opts.backend,
        "metric": study.metric,
        "direction": study.direction,
        "space": {k: distribution_to_json(d) for k, d in study.space.distributions().items()},
        "config": {k: v for k, v in cfg.items() if k not in searched and k not in LOCAL_FIELDS},
        "seeds": trial_seeds(study, opts),
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
    model: Any = field(default=None, repr=False)  # the first seed's student (COMPLETE only)
    seeds: tuple[int, ...] = ()
    seed_metrics: list[dict[str, float]] = field(default_factory=list)  # final metrics per seed


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial is logged besides the search's own files (``--mlflow``), and as what."""

    uri: str | None  # MLflow tracking URI; None: no tracking (mlflow is not imported)
    study: str  # the experiment's name
    trial: int | str  # the trial's number (Optuna) or id (Ray)


def train_trial(
    cfg: TrainConfig,
    *,
    metric: str,
    on_epoch: EpochHook,
    seeds: Sequence[int] = (),
    track: TrialTracking | None = None,
    checkpoint: Path | Checkpoint | None = None,
) -> TrialOutcome:
    """Train ``cfg`` on every seed of ``seeds`` as one population, reporting the seed mean of
    each epoch; a divergence or a non-finite final value is a FAIL outcome rather than an
    exception, the same for every backend.

    Args:
        cfg: The trial's full configuration.
        metric: The study's metric; the trial's value is its mean over the seeds.
        on_epoch: Called as ``on_epoch(epoch, row, is_last)`` after every epoch whose mean
            ``metric`` is finite (epochs are 1-based), with the seed mean of every key. It may
            raise (e.g. ``optuna.TrialPruned``) to stop the run; that exception propagates, as
            does any other error of the run.
        seeds: The seeds (the same in every trial, so trials pair); empty: ``cfg.seed`` alone.
        track: Log the trial's config, every epoch and its end to MLflow too (``--mlflow``).
        checkpoint: Where the trial keeps its state (:mod:`dgkd.checkpoint`): a trial run
            again with it resumes where this one stopped.
    """
    seeds = tuple(seeds) or (cfg.seed,)
    if track is None or track.uri is None:
        return _train_trial(
            cfg, metric=metric, on_epoch=on_epoch, seeds=seeds, checkpoint=checkpoint
        )
    from dgkd.tracking import mlflow_run

    with mlflow_run(track.uri, experiment=track.study, trial=track.trial, config=cfg) as run:

        def tracked(epoch: int, row: dict[str, float], last: bool) -> None:
            run.log_epoch(epoch, row)
            on_epoch(epoch, row, last)

        outcome = _train_trial(
            cfg, metric=metric, on_epoch=tracked, seeds=seeds, checkpoint=checkpoint
        )
        run.end(outcome.state.value, outcome.metrics)
        return outcome


def _mean_row(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each key every row has (the seed mean of one epoch or of the final metrics)."""
    keys = [k for k in rows[0] if all(k in r for r in rows[1:])]
    return {k: math.fsum(float(r[k]) for r in rows) / len(rows) for k in keys}


class _Stopped(Exception):
    """Stops the other seeds of a trial that was pruned (or failed) at its seed mean."""


def _train_trial(
    cfg: TrainConfig,
    *,
    metric: str,
    on_epoch: EpochHook,
    seeds: Sequence[int],
    checkpoint: Path | Checkpoint | None,
) -> TrialOutcome:
    from dgkd.loop import DivergedError
    from dgkd.train import train_population

    cfgs = [cfg.replace(seed=s) for s in seeds]
    last = cfg.epochs
    pending: dict[int, dict[int, dict[str, float]]] = {}  # epoch -> {member: its row}
    stop: list[BaseException] = []

    def report(member: int, epoch: int, row: dict[str, float]) -> None:
        if stop:
            raise _Stopped
        rows = pending.setdefault(epoch, {})
        rows[member] = row
        if len(rows) < len(cfgs):
            return
        mean = _mean_row([rows[i] for i in range(len(cfgs))])
        del pending[epoch]
        if is_finite_number(mean.get(metric)):
            try:
                on_epoch(epoch, mean, epoch >= last)
            except BaseException as exc:
                stop.append(exc)
                raise

    try:
        results = train_population(cfgs, report=report, checkpoint=checkpoint)
    except DivergedError as exc:  # the teacher's own training
        return TrialOutcome(
            TrialState.FAIL, None, fail_reason=f"diverged: {exc}", fail_epoch=exc.epoch
        )
    if stop:
        raise stop[0]
    for seed, res in zip(seeds, results, strict=True):
        if isinstance(res.error, DivergedError):
            return TrialOutcome(
                TrialState.FAIL,
                None,
                fail_reason=f"diverged: {res.error} (seed {seed})",
                fail_epoch=res.error.epoch,
                seeds=tuple(seeds),
            )
        if res.error is not None:
            raise res.error
    per_seed = [dict(r.metrics) for r in results]
    metrics = _mean_row(per_seed)
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):
        return TrialOutcome(
            TrialState.FAIL,
            None,
            metrics,
            fail_reason=f"{metric} is {value}",
            seeds=tuple(seeds),
            seed_metrics=per_seed,
        )
    return TrialOutcome(
        TrialState.COMPLETE,
        float(value),
        metrics,
        model=results[0].model,
        seeds=tuple(seeds),
        seed_metrics=per_seed,
    )


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

"""The trial body every backend runs: a config's seeds trained as one population and reported
as their mean, and a batch of trials trained as one population too.

A trial's members are its seeds; a batch's members are every trial's seeds. Each trial sees
only its own seed mean at each epoch, is pruned (or fails) on its own, and comes out as it
would have alone: a member's metrics do not depend on its neighbours (``train_population``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dgkd.search.common import is_finite_number
from dgkd.search.records import TrialState

if TYPE_CHECKING:
    from pathlib import Path

    from dgkd.checkpoint import Checkpoint
    from dgkd.config import TrainConfig
    from dgkd.train import TrainResult

__all__ = [
    "EpochHook",
    "TrialJob",
    "TrialOutcome",
    "TrialTracking",
    "train_trial",
    "train_trials",
]

EpochHook = Callable[[int, dict[str, float], bool], None]  # (epoch, row, is_last_epoch)


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
    models: tuple[Any, ...] = field(default=(), repr=False)  # every seed's student (COMPLETE)


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial is logged besides the search's own files (``--mlflow``), and as what."""

    uri: str | None  # MLflow tracking URI; None: no tracking (mlflow is not imported)
    study: str  # the experiment's name
    trial: int | str  # the trial's number (Optuna) or id (Ray)


@dataclass(frozen=True)
class TrialJob:
    """One trial of a batch: what it trains and where its epochs go.

    Attributes:
        cfg: The trial's full configuration.
        on_epoch: Called as ``on_epoch(epoch, row, is_last)`` after every epoch whose mean
            metric is finite (epochs are 1-based), with the seed mean of every key. It may raise
            (e.g. ``optuna.TrialPruned``) to stop this trial; the others go on.
        seeds: The seeds (the same in every trial, so trials pair); empty: ``cfg.seed`` alone.
        track: Log the trial's config, every epoch and its end to MLflow too (``--mlflow``).
    """

    cfg: TrainConfig
    on_epoch: EpochHook
    seeds: tuple[int, ...] = ()
    track: TrialTracking | None = None


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
        cfg, on_epoch, seeds, track: As in :class:`TrialJob`; an exception of ``on_epoch``
            propagates, as does any other error of the run.
        metric: The study's metric; the trial's value is its mean over the seeds.
        checkpoint: Where the trial keeps its state (:mod:`dgkd.checkpoint`): a trial run
            again with it resumes where this one stopped.
    """
    job = TrialJob(cfg, on_epoch, tuple(seeds), track)
    (outcome,) = train_trials([job], metric=metric, checkpoint=checkpoint)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_trials(
    jobs: Sequence[TrialJob],
    *,
    metric: str,
    checkpoint: Path | Checkpoint | None = None,
) -> list[TrialOutcome | BaseException]:
    """Train a batch of trials, every seed of every trial, as one population (or as few as
    their configs allow: :func:`dgkd.train.population_groups`).

    Returns:
        Per job, its :class:`TrialOutcome`, or the exception its ``on_epoch`` raised (the trial
        stopped there; e.g. pruned) or its run raised.

    Raises:
        Whatever is not one trial's doing: ``KeyboardInterrupt``, an invalid config, a crash.
    """
    from dgkd.loop import DivergedError
    from dgkd.train import train_population

    seeds = [job.seeds or (job.cfg.seed,) for job in jobs]
    owner = [j for j, s in enumerate(seeds) for _ in s]  # member -> its job
    cfgs = [job.cfg.replace(seed=s) for job, ss in zip(jobs, seeds, strict=True) for s in ss]
    with contextlib.ExitStack() as stack:  # MLflow runs left open by an exception are failed
        runs = [_mlflow_run(stack, job) for job in jobs]
        hooks = [
            job.on_epoch if run is None else _logged(job.on_epoch, run)
            for job, run in zip(jobs, runs, strict=True)
        ]
        means = _SeedMeans(jobs, seeds, hooks, owner, metric)
        outcomes: list[TrialOutcome | BaseException]
        try:
            results = train_population(cfgs, report=means.report, checkpoint=checkpoint)
        except DivergedError as exc:  # the teacher's own training
            reason = f"diverged: {exc}"
            outcomes = [
                TrialOutcome(TrialState.FAIL, None, fail_reason=reason, fail_epoch=exc.epoch)
                for _ in jobs
            ]
        else:
            outcomes = [
                means.stopped.get(j) or _outcome(metric, seeds[j], results, owner, j)
                for j in range(len(jobs))
            ]
        for run, out in zip(runs, outcomes, strict=True):
            if run is None:
                continue
            if isinstance(out, BaseException):
                run.end(type(out).__name__, {})
            else:
                run.end(out.state.value, out.metrics)
    return outcomes


def _mlflow_run(stack: contextlib.ExitStack, job: TrialJob) -> Any:
    """The job's MLflow run (``dgkd.tracking.MlflowRun``), open until the batch ends; None
    when the job is not tracked (mlflow is then not imported)."""
    track = job.track
    if track is None or track.uri is None:
        return None
    from dgkd.tracking import mlflow_run

    return stack.enter_context(
        mlflow_run(track.uri, experiment=track.study, trial=track.trial, config=job.cfg)
    )


def _logged(on_epoch: EpochHook, run: Any) -> EpochHook:
    """``on_epoch`` that logs every epoch to ``run`` first."""

    def hook(epoch: int, row: dict[str, float], last: bool) -> None:
        run.log_epoch(epoch, row)
        on_epoch(epoch, row, last)

    return hook


def _mean_row(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each key every row has (the seed mean of one epoch or of the final metrics)."""
    keys = [k for k in rows[0] if all(k in r for r in rows[1:])]
    return {k: math.fsum(float(r[k]) for r in rows) / len(rows) for k in keys}


class _Stopped(Exception):
    """Stops the other seeds of a trial that was pruned (or failed) at its seed mean."""


class _SeedMeans:
    """The population's report: per trial, wait for every seed's row of an epoch, hand the
    mean to the trial's hook, and stop all of the trial's seeds when that hook raises."""

    def __init__(
        self,
        jobs: Sequence[TrialJob],
        seeds: Sequence[Sequence[int]],
        hooks: Sequence[EpochHook],
        owner: Sequence[int],
        metric: str,
    ) -> None:
        self.jobs, self.hooks, self.owner, self.metric = jobs, hooks, owner, metric
        self.first = [owner.index(j) for j in range(len(jobs))]  # a job's first member
        self.sizes = [len(s) for s in seeds]
        self.pending: dict[tuple[int, int], dict[int, dict[str, float]]] = {}
        self.stopped: dict[int, BaseException] = {}  # job -> what stopped it

    def report(self, member: int, epoch: int, row: dict[str, float]) -> None:
        j = self.owner[member]
        if j in self.stopped:
            raise _Stopped
        rows = self.pending.setdefault((j, epoch), {})
        rows[member - self.first[j]] = row
        if len(rows) < self.sizes[j]:
            return
        mean = _mean_row([rows[i] for i in range(self.sizes[j])])
        del self.pending[(j, epoch)]
        if is_finite_number(mean.get(self.metric)):
            try:
                self.hooks[j](epoch, mean, epoch >= self.jobs[j].cfg.epochs)
            except Exception as exc:
                self.stopped[j] = exc
                raise


def _outcome(
    metric: str,
    seeds: Sequence[int],
    results: Sequence[TrainResult],
    owner: Sequence[int],
    job: int,
) -> TrialOutcome | BaseException:
    """Job ``job``'s outcome from its members' results."""
    from dgkd.loop import DivergedError

    mine = [r for r, j in zip(results, owner, strict=True) if j == job]
    for seed, res in zip(seeds, mine, strict=True):
        if isinstance(res.error, DivergedError):
            return TrialOutcome(
                TrialState.FAIL,
                None,
                fail_reason=f"diverged: {res.error} (seed {seed})",
                fail_epoch=res.error.epoch,
                seeds=tuple(seeds),
            )
        if res.error is not None:
            return res.error
    per_seed = [dict(r.metrics) for r in mine]
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
        model=mine[0].model,
        seeds=tuple(seeds),
        seed_metrics=per_seed,
        models=tuple(r.model for r in mine),
    )

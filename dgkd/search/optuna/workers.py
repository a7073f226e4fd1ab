"""A worker: one process running an Optuna study's trials in batches (of one by default).

Workers claim a trial (or a batch of them, :mod:`.batch`) under a file lock (check the count,
``ask``), so several processes on a machine (:mod:`.processes`) stop at exactly the total.
Every trial records its process as ``user_attrs["worker"]`` (see :mod:`.recovery`); Ctrl-C and
SIGTERM fail the trials they interrupt and enqueue their parameters again; the re-run resumes
the interrupted trial's checkpoint. A trial writes its history, its state while it trains and
its (complete) student (:mod:`..trialfiles`).
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage

from dgkd.io import json_metrics
from dgkd.runtime import set_threads
from dgkd.search.common import base_config, trial_seeds
from dgkd.search.optuna.batch import Batch, BatchFailed
from dgkd.search.optuna.records import (
    SEED_METRICS_ATTR,
    TRIAL_ATTRS,
    occupied,
    seed_attrs,
    to_records,
)
from dgkd.search.optuna.recovery import retried_trial, worker_id
from dgkd.search.optuna.storage import defer_interrupt, is_url, journal_path, uninterruptible
from dgkd.search.records import (
    INTERRUPTED,
    SearchOptions,
    TrialRecord,
    TrialState,
)
from dgkd.search.sampling import make_pruner, make_sampler
from dgkd.search.trial import TrialJob, TrialOutcome, TrialTracking
from dgkd.search.trialfiles import (
    save_students,
    trial_checkpoint,
    write_history,
)

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["Quiet", "Worker"]

CLAIM_LOCK = ".claim.lock"


# --- one process ------------------------------------------------------------------------------


def _derive_seed(seed: int, worker: int, existing: int) -> int:
    """Seeds that differ per worker and per restart (a restarted random sampler must not
    replay its first draws), and equal the study's seed for a fresh single-worker search."""
    return (seed + 7919 * worker + 1_000_003 * existing) % (2**32)


class _TrialFailed(Exception):
    """A trial finished without a usable value (recorded as FAIL; the search goes on)."""


class Worker:
    """Runs trials of one study in this process until the study's total is reached."""

    def __init__(
        self,
        study: Study,
        opts: SearchOptions,
        *,
        total: int,
        index: int,
        storage: BaseStorage,
        on_change: Callable[[list[TrialRecord]], None] | None = None,
    ) -> None:
        from filelock import FileLock

        self.study, self.opts, self.total, self.on_change = study, opts, total, on_change
        probe = optuna.load_study(study_name=study.name, storage=storage)
        existing = len(probe.get_trials(deepcopy=False))
        cfg = base_config(study, opts)
        self.ostudy = optuna.load_study(
            study_name=study.name,
            storage=storage,
            sampler=make_sampler(study, seed=_derive_seed(study.seed, index, existing)),
            pruner=make_pruner(study, cfg.epochs, cfg.warmup),
        )
        lock_dir = Path(opts.out_dir if is_url(opts.storage) else journal_path(opts).parent)
        lock_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(lock_dir / CLAIM_LOCK))
        self._holding = False
        self._id = worker_id()
        self._heartbeat = is_url(opts.storage)
        self._seeds = tuple(trial_seeds(study, opts))
        self._batch = opts.batch or 1

    def records(self) -> list[TrialRecord]:
        """Every trial of the study, as records."""
        return to_records(self.ostudy.get_trials(deepcopy=False))

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._lock.release()

    def loop(self) -> None:
        """Claim and run trials until finished + running trials reach the total."""
        while True:
            self._lock.acquire()
            self._holding = True
            try:
                if self._heartbeat:  # fail (and re-enqueue) trials whose heartbeat stopped first
                    optuna.storages.fail_stale_trials(self.ostudy)
                free = self.total - occupied(self.ostudy.get_trials(deepcopy=False))
                if free <= 0:
                    return
                self._run_batch(min(self._batch, free))
            finally:
                self._release()

    def _run_batch(self, size: int) -> None:
        """Ask for ``size`` trials, one after another (so the sampler's draws and the trials'
        numbers are reproducible, and each sees the ones before it as running), then release
        the claim and train them as one population here.

        A single trial goes this way too: Optuna's ``ask`` and ``tell`` then run in the trial's
        thread, which Ctrl-C and SIGTERM never reach (Python runs signal handlers in the main
        thread), so no signal can land between a trial's creation or its end and their
        recording; the main thread, which trains, handles every interruption.
        """
        batch = Batch()
        ended: list[threading.Event] = []  # one per started thread: set when it has ended
        try:
            for _ in range(size):
                claimed, end = threading.Event(), threading.Event()
                thread = threading.Thread(
                    target=self._batch_thread, args=(batch, claimed, end), daemon=True
                )
                with uninterruptible():  # a signal inside start() would hide whether it runs
                    thread.start()
                    ended.append(end)
                claimed.wait()
            self._release()
            if self.on_change is not None:
                self.on_change(self.records())
            batch.train(self.study.metric)
        except BaseException as exc:
            try:
                if isinstance(exc, KeyboardInterrupt) and not batch.trained:
                    # One block: a second signal here is raised after every trial is re-enqueued
                    # (in batch order: their re-run is one batch again, and resumes this one's
                    # checkpoint), and the batch is stopped whatever happens, so no trial thread
                    # waits for it forever and leaves its trial RUNNING.
                    with uninterruptible():
                        for trial in batch.trials:
                            self._interrupted(trial)
                            batch.reenqueued.add(trial.number)
            finally:
                batch.stop(exc)
            raise
        finally:
            _wait_for(ended)
            if self.on_change is not None:
                self.on_change(self.records())
        errors = [e for e in batch.thread_errors if not isinstance(e, BatchFailed)]
        if errors:  # as the trial's own exception would have ended a single trial's worker
            raise errors[0]

    def _batch_thread(self, batch: Batch, claimed: threading.Event, end: threading.Event) -> None:
        try:
            self.ostudy.optimize(
                lambda trial: self._batch_trial(trial, batch, claimed),
                n_trials=1,
                catch=(_TrialFailed,),
                gc_after_trial=False,
            )
        except BaseException as exc:  # the main thread raises what matters
            batch.thread_errors.append(exc)
        finally:
            claimed.set()
            end.set()

    def _batch_trial(self, trial: optuna.Trial, batch: Batch, claimed: threading.Event) -> float:
        try:
            with trial_checkpoint(self.opts.out_dir, trial.number, retried_trial(trial)) as path:
                rows: list[dict[str, float]] = []
                try:
                    job = self._job(trial, rows)
                    index = batch.submit(job, path, trial)
                    claimed.set()
                    outcome = batch.outcome(index)
                    if isinstance(outcome, BaseException):
                        raise outcome
                except (optuna.TrialPruned, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                    raise
                finally:
                    claimed.set()
                    write_history(self.opts.out_dir, trial.number, rows)
                return self._finish(trial, outcome)
        except KeyboardInterrupt:
            if trial.number not in batch.reenqueued:
                self._interrupted(trial)
            raise

    def _interrupted(self, trial: optuna.Trial) -> None:
        """Keep its number, do not count it, re-run its parameters (its state stays for that).

        The three writes are one uninterruptible block: a second signal arriving between them
        (a Ctrl-C after a SIGTERM, or the parent's death signal) would otherwise leave the trial
        marked interrupted with no re-run enqueued. The re-run is enqueued first: a SIGKILL,
        which no block stops, then leaves at worst a re-run whose trial is still RUNNING, which
        the next start's recovery fails without enqueueing it twice.
        """
        with uninterruptible():
            self.ostudy.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", f"{INTERRUPTED}: stopped by Ctrl-C or SIGTERM")

    def _job(self, trial: optuna.Trial, rows: list[dict[str, float]]) -> TrialJob:
        """The trial's parameters drawn, and what it trains; ``rows`` collects its epochs."""
        trial.set_user_attr("worker", self._id)
        params = self.study.space.suggest(trial)
        cfg = self.study.config(params, self.opts.overrides)

        def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
            rows.append(row)
            trial.report(float(row[self.study.metric]), epoch)
            if not last and trial.should_prune():  # a finished trial is never pruned
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        tracking = TrialTracking(self.opts.mlflow, self.study.name, trial.number)
        return TrialJob(cfg, on_epoch, self._seeds, tracking)

    def _finish(self, trial: optuna.Trial, outcome: TrialOutcome) -> float:
        """Record a trained trial's metrics and student; its value, or :class:`_TrialFailed`."""
        for key, value in json_metrics(outcome.metrics).items():
            if key not in TRIAL_ATTRS:
                trial.set_user_attr(key, value)
        trial.set_user_attr("seeds", list(outcome.seeds))
        if outcome.seed_metrics:
            per_seed = [json_metrics(m) for m in outcome.seed_metrics]
            trial.storage.set_trial_system_attr(trial._trial_id, SEED_METRICS_ATTR, per_seed)
            flat = seed_attrs(outcome.seeds, outcome.seed_metrics, self.study.metric)
            for key, value in flat.items():
                trial.set_user_attr(key, value)
        if outcome.fail_epoch is not None:
            trial.set_user_attr("fail_epoch", outcome.fail_epoch)
        if outcome.state != TrialState.COMPLETE or outcome.value is None:
            trial.set_user_attr("fail_reason", outcome.fail_reason)
            raise _TrialFailed(outcome.fail_reason)
        if outcome.models:  # before the trial is COMPLETE: the exporter reads them then
            save_students(self.opts.out_dir, trial.number, outcome.seeds, outcome.models)
        return outcome.value


def _wait_for(ended: list[threading.Event]) -> None:
    """Wait until every thread of a batch has ended (they record their trials' ends), even
    through Ctrl-C or SIGTERM: a trial left behind would stay RUNNING. An interruption is raised
    after.

    Events, not ``Thread.join``: before Python 3.13 a join interrupted by a signal marks the
    still-running thread as stopped, so every later join returns at once (CPython gh-90882). The
    worker then exited while its batch's threads still ran, killing one before it told the
    storage its trial's end (seen: the trial stayed RUNNING), and able to kill one holding the
    journal's lock file (the other worker would then wait for that lock up to Optuna's 30 s
    grace period, past the parent's stop timeout).
    """
    interrupted = False
    for end in ended:
        while True:
            try:
                end.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
    if interrupted:
        raise KeyboardInterrupt


class Quiet:
    """Optuna's own per-trial logging off (we print our lines; it would print tracebacks of
    caught failures); Ctrl-C and SIGTERM interrupt, but never inside a journal write; torch
    threads set. All restored on exit.

    Args:
        threads: Torch intra-op threads for the block; None leaves them alone.
    """

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __enter__(self) -> Quiet:
        self._verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        self._threads = set_threads(self.threads) if self.threads else None
        self._handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, defer_interrupt)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
                self._handlers[signal.SIGINT] = signal.signal(signal.SIGINT, defer_interrupt)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        if self._threads is not None:
            set_threads(self._threads)
        self._warnings.__exit__(exc_type, exc, tb)
        optuna.logging.set_verbosity(self._verbosity)

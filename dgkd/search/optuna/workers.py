"""Processes that run an Optuna study's trials, and recovery from ones that stopped.

Workers claim a trial under a file lock (check the count, ``ask``), so several processes on a
machine stop at exactly the total. Every trial records its process as ``user_attrs["worker"]``
(see :mod:`.recovery`); Ctrl-C and SIGTERM fail the trials they interrupt and enqueue their
parameters again; the re-run resumes the interrupted trial's checkpoint. A trial writes its
history, its state while it trains and its (complete) student (:mod:`..trialfiles`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage

from dgkd.config import ConfigError
from dgkd.errors import one_line
from dgkd.io import json_metrics
from dgkd.runtime import set_threads, threads_per_worker
from dgkd.search.common import TrialTracking, train_trial, trial_seeds
from dgkd.search.optuna.records import TRIAL_ATTRS, occupied, to_records
from dgkd.search.optuna.recovery import retried_trial, worker_id
from dgkd.search.optuna.storage import defer_interrupt, is_url, journal_path, open_storage
from dgkd.search.records import (
    INTERRUPTED,
    SearchInputError,
    SearchOptions,
    TrialRecord,
    TrialState,
)
from dgkd.search.reporter import SearchReporter
from dgkd.search.sampling import make_pruner, make_sampler
from dgkd.search.trialfiles import (
    checkpoint_path,
    save_student,
    student_path,
    trial_checkpoint,
    write_history,
)
from dgkd.space import SpecError

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["Quiet", "Worker", "run_processes"]

CLAIM_LOCK = ".claim.lock"
POLL_S = 0.5  # how often the parent of several workers reads the storage


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
        cfg = study.check_overrides(opts.overrides)
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
        self._seeds = trial_seeds(study, opts)

    def records(self) -> list[TrialRecord]:
        """Every trial of the study, as records."""
        return to_records(self.ostudy.get_trials(deepcopy=False))

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._lock.release()

    def loop(self) -> None:
        """Claim and run trials until finished + running trials reach the total."""
        callbacks = [self._after] if self.on_change else None
        while True:
            self._lock.acquire()
            self._holding = True
            try:
                if self._heartbeat:  # fail (and re-enqueue) trials whose heartbeat stopped first
                    optuna.storages.fail_stale_trials(self.ostudy)
                if occupied(self.ostudy.get_trials(deepcopy=False)) >= self.total:
                    return
                self.ostudy.optimize(
                    self._objective,
                    n_trials=1,
                    catch=(_TrialFailed,),
                    callbacks=callbacks,
                    gc_after_trial=False,
                )
            finally:
                self._release()

    def _after(self, _study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if self.on_change is not None:
            self.on_change(self.records())

    def _objective(self, trial: optuna.Trial) -> float:
        self._release()  # the trial now exists (RUNNING): others may claim theirs
        try:  # its state stays for its re-run if interrupted, goes when it ends
            with trial_checkpoint(self.opts.out_dir, trial.number, retried_trial(trial)):
                return self._trial(trial)
        except KeyboardInterrupt:  # keeps its number, does not count, re-runs its parameters
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", f"{INTERRUPTED}: stopped by Ctrl-C or SIGTERM")
            self.ostudy.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            raise

    def _trial(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self._id)
        params = self.study.space.suggest(trial)
        cfg = self.study.config(params, self.opts.overrides)
        if self.on_change is not None:
            self.on_change(self.records())
        rows: list[dict[str, float]] = []

        def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
            rows.append(row)
            trial.report(float(row[self.study.metric]), epoch)
            if not last and trial.should_prune():  # a finished trial is never pruned
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        tracking = TrialTracking(self.opts.mlflow, self.study.name, trial.number)
        try:
            outcome = train_trial(
                cfg,
                metric=self.study.metric,
                on_epoch=on_epoch,
                seeds=self._seeds,
                track=tracking,
                checkpoint=checkpoint_path(self.opts.out_dir, trial.number),
            )
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            write_history(self.opts.out_dir, trial.number, rows)
        for key, value in json_metrics(outcome.metrics).items():
            if key not in TRIAL_ATTRS:
                trial.set_user_attr(key, value)
        trial.set_user_attr("seeds", list(outcome.seeds))
        if outcome.seed_metrics:
            trial.set_user_attr("seed_metrics", [json_metrics(m) for m in outcome.seed_metrics])
        if outcome.fail_epoch is not None:
            trial.set_user_attr("fail_epoch", outcome.fail_epoch)
        if outcome.state != TrialState.COMPLETE or outcome.value is None:
            trial.set_user_attr("fail_reason", outcome.fail_reason)
            raise _TrialFailed(outcome.fail_reason)
        if outcome.model is not None:  # before the trial is COMPLETE: the exporter judges it
            save_student(student_path(self.opts.out_dir, trial.number), outcome.model)
        return outcome.value


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


# --- several processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (even by SIGKILL).

    SIGTERM is what a worker already handles: its trial is marked interrupted and re-enqueued,
    so a killed ``dgkd-search`` leaves no orphan training on and no trial stuck RUNNING. Elsewhere
    (no prctl) the parent's own recovery on restart covers the same case.
    """
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(130)


def _worker_main(
    study: Study, opts: SearchOptions, total: int, index: int, errors: Any
) -> None:  # pragma: no cover - runs in a spawned process (covered by the subprocess tests)
    """Entry point of a spawned worker process."""
    _die_with_parent()
    try:
        with Quiet(threads_per_worker(opts.workers)):
            Worker(study, opts, total=total, index=index, storage=open_storage(opts)).loop()
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        bad = isinstance(exc, ConfigError | SpecError | SearchInputError)
        errors.put((index, bad, one_line(exc)))
        sys.exit(1)


def run_processes(
    study: Study, opts: SearchOptions, total: int, ostudy: optuna.Study, reporter: SearchReporter
) -> None:
    """Spawn ``opts.workers`` processes sharing the storage; poll it for progress.

    Raises:
        SearchInputError: a worker hit bad input.
        RuntimeError: a worker failed.
    """
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(study, opts, total, i, errors),
            name=f"dgkd-search-{study.name}-{i}",
        )
        for i in range(opts.workers)
    ]
    for p in procs:
        p.start()
    failure: tuple[int, bool, str] | None = None
    try:
        while any(p.is_alive() for p in procs):
            reporter.update(to_records(ostudy.get_trials(deepcopy=False)))
            with contextlib.suppress(queue.Empty):
                failure = failure or errors.get_nowait()
            if failure is not None:
                _stop(procs)
                break
            time.sleep(POLL_S)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    while failure is None:
        try:
            failure = errors.get_nowait()
        except queue.Empty:
            break
    if failure is not None:
        index, bad, message = failure
        raise (SearchInputError if bad else RuntimeError)(f"worker {index}: {message}")
    codes = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if codes:
        raise RuntimeError(f"a worker exited with code {codes[0]}; rerun to continue the search")


def _stop(procs: Sequence[multiprocessing.process.BaseProcess], timeout: float = 30.0) -> None:
    """Interrupt workers (they fail and re-enqueue their trials), then wait; kill stragglers.

    SIGTERM, which workers turn into KeyboardInterrupt: SIGINT may be ignored by a worker
    started from a background job.
    """
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()

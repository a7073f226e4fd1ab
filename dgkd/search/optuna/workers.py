"""Processes that run an Optuna study's trials, and recovery from ones that stopped.

Workers claim a trial under a file lock (check the count, ``ask``), so several processes on a
machine stop at exactly the total. The journal has no heartbeat, so every trial records its
process as ``user_attrs["worker"]`` (``host:pid:start``). On start, a RUNNING trial whose process
is gone is failed and its parameters enqueued again; Ctrl-C and SIGTERM do the same for the
trials they interrupt.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState as OptunaState

from dgkd.config import ConfigError
from dgkd.errors import one_line
from dgkd.io import json_metrics
from dgkd.runtime import set_threads, threads_per_worker
from dgkd.search.common import train_trial
from dgkd.search.optuna.records import occupied, to_records
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
from dgkd.space import SpecError

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["Quiet", "Worker", "recover", "run_processes", "worker_id"]

CLAIM_LOCK = ".claim.lock"
POLL_S = 0.5  # how often the parent of several workers reads the storage
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


def recover(ostudy: optuna.Study, *, journal: bool) -> list[int]:
    """Fail RUNNING trials whose process is gone and enqueue their parameters again.

    RDB storages also do this by heartbeat; here it is immediate for processes of this host.
    Returns the numbers of the trials failed.
    """
    storage = ostudy._storage
    now = datetime.now()
    failed = []
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
        ostudy.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


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
        try:
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

        def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
            trial.report(float(row[self.study.metric]), epoch)
            if not last and trial.should_prune():  # a finished trial is never pruned
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            outcome = train_trial(cfg, metric=self.study.metric, on_epoch=on_epoch)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        if outcome.metrics:
            trial.set_user_attr("metrics", json_metrics(outcome.metrics))
        if outcome.fail_epoch is not None:
            trial.set_user_attr("fail_epoch", outcome.fail_epoch)
        if outcome.state != TrialState.COMPLETE or outcome.value is None:
            trial.set_user_attr("fail_reason", outcome.fail_reason)
            raise _TrialFailed(outcome.fail_reason)
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

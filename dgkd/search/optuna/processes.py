"""Several processes running one Optuna study's trials, each a :class:`~.workers.Worker`."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

from dgkd.config import ConfigError
from dgkd.errors import one_line
from dgkd.runtime import die_with_parent, threads_per_worker
from dgkd.search.optuna.records import to_records
from dgkd.search.optuna.storage import open_storage
from dgkd.search.optuna.workers import Quiet, Worker
from dgkd.search.records import SearchInputError, SearchOptions
from dgkd.search.reporter import SearchReporter
from dgkd.space import SpecError

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["run_processes"]

POLL_S = 0.5  # how often the parent of several workers reads the storage


def _worker_main(
    study: Study, opts: SearchOptions, total: int, index: int, errors: Any, parent: int
) -> None:  # pragma: no cover - runs in a spawned process (covered by the subprocess tests)
    """Entry point of a spawned worker process."""
    die_with_parent(parent)
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
            args=(study, opts, total, i, errors, os.getpid()),
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
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:  # also on a second Ctrl-C during the wait: no worker outlives the command
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
                # Its RUNNING trials are failed and re-run by the next start's recovery.
                print(
                    f"dgkd-search: {p.name} did not stop within {timeout:.0f} s and was killed; "
                    "the next run re-runs its trials",
                    file=sys.stderr,
                    flush=True,
                )

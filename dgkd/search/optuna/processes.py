"""Several processes running one Optuna study's trials, each a :class:`~.workers.Worker`."""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from dgkd.config import ConfigError
from dgkd.errors import one_line
from dgkd.io import atomic_write_text
from dgkd.runtime import die_with_parent, threads_per_worker
from dgkd.search.optuna.records import to_records
from dgkd.search.optuna.storage import open_storage
from dgkd.search.optuna.workers import Quiet, Worker
from dgkd.search.records import SearchInputError, SearchOptions
from dgkd.search.reporter import SearchReporter
from dgkd.space import SpecError

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["STACKS_SIGNAL", "dump_stacks_on_request", "run_processes"]

POLL_S = 0.5  # how often the parent of several workers reads the storage
STACKS_SIGNAL = signal.SIGUSR1  # asks a worker for its threads' stacks before it is killed


def dump_stacks_on_request(path: Path) -> None:
    """Write every thread's Python stack to ``path`` when :data:`STACKS_SIGNAL` arrives.

    faulthandler writes from its C signal handler, so the dump comes even from a worker whose
    threads are stuck (in C code, or holding the GIL): what a worker that ignored its stop
    was doing is on record when it is killed. The file stays open for the process's life.
    """
    faulthandler.register(STACKS_SIGNAL, file=path.open("w"), all_threads=True)


def _worker_main(
    study: Study,
    opts: SearchOptions,
    total: int,
    index: int,
    errors: Any,
    parent: int,
    stacks: Path,
) -> None:  # pragma: no cover - runs in a spawned process (covered by the subprocess tests)
    """Entry point of a spawned worker process."""
    die_with_parent(parent)
    dump_stacks_on_request(stacks)
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
    with tempfile.TemporaryDirectory(prefix="dgkd-stacks-") as scratch:
        stacks = [Path(scratch) / f"worker-{i}.txt" for i in range(opts.workers)]
        _run(study, opts, total, ostudy, reporter, stacks)


def _run(
    study: Study,
    opts: SearchOptions,
    total: int,
    ostudy: optuna.Study,
    reporter: SearchReporter,
    stacks: list[Path],
) -> None:
    """:func:`run_processes` with worker ``i`` writing its stacks, when asked, to ``stacks[i]``."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(study, opts, total, i, errors, os.getpid(), stacks[i]),
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
                _stop(procs, stacks=stacks, keep_in=opts.out_dir)
                break
            time.sleep(POLL_S)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        _stop(procs, stacks=stacks, keep_in=opts.out_dir)
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


def _stop(
    procs: Sequence[multiprocessing.process.BaseProcess],
    timeout: float = 30.0,
    *,
    stacks: Sequence[Path] = (),
    keep_in: Path | None = None,
) -> None:
    """Interrupt workers (they fail and re-enqueue their trials), then wait; kill stragglers.

    SIGTERM, which workers turn into KeyboardInterrupt: SIGINT may be ignored by a worker
    started from a background job. A straggler is first asked for its threads' stacks
    (``stacks[i]`` is where worker ``i`` writes them), which are kept in ``keep_in`` as
    ``<worker name>.stacks.txt`` and named in the message: why it did not stop is on record.
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
        waited = time.monotonic() >= deadline  # not after a second Ctrl-C: that one is in a hurry
        for i, p in enumerate(procs):
            if p.is_alive():
                kept = None
                # Best effort: a Ctrl-C or an unwritable run directory skips the stacks, never
                # the kill.
                with contextlib.suppress(KeyboardInterrupt, OSError):
                    if waited and i < len(stacks):
                        kept = _stacks_of(p, stacks[i], keep_in)
                p.kill()
                p.join()
                # Its RUNNING trials are failed and re-run by the next start's recovery.
                where = f" (its threads' stacks: {kept})" if kept else ""
                print(
                    f"dgkd-search: {p.name} did not stop within {timeout:.0f} s and was "
                    f"killed{where}; the next run re-runs its trials",
                    file=sys.stderr,
                    flush=True,
                )


def _stacks_of(
    proc: multiprocessing.process.BaseProcess, dump: Path, keep_in: Path | None
) -> Path | None:
    """Ask a live worker for its stacks (:func:`dump_stacks_on_request`) and keep them; the
    kept file, or None when the worker wrote none within 2 s or there is nowhere to keep it."""
    if keep_in is None or proc.pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, STACKS_SIGNAL)
    deadline, size = time.monotonic() + 2.0, -1
    while time.monotonic() < deadline:  # written from a signal handler: wait until it stops growing
        time.sleep(0.1)
        now = dump.stat().st_size if dump.exists() else 0
        if now and now == size:
            break
        size = now
    text = dump.read_text(errors="replace") if dump.exists() else ""
    if not text.strip():
        return None
    return atomic_write_text(keep_in / f"{proc.name}.stacks.txt", text)

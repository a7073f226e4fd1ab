"""The Optuna backend: one study in a journal file or an RDB, run by one or more processes.

Storage and resume checks are in :mod:`.storage`, the trial-running processes and the recovery
of trials whose process stopped in :mod:`.workers`; this module puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from dgkd.runtime import set_threads, threads_per_worker
from dgkd.search.base import SearchBackend
from dgkd.search.common import (
    Log,
    base_config,
    grid_size,
    print_line,
    stop_interrupted,
    trial_total,
)
from dgkd.search.optuna.processes import run_processes
from dgkd.search.optuna.records import occupied, to_records
from dgkd.search.optuna.recovery import recover
from dgkd.search.optuna.storage import (
    check_storage,
    create_or_load,
    inspect_command,
    is_url,
    open_for_search,
    storage_label,
)
from dgkd.search.optuna.workers import Quiet, Worker
from dgkd.search.records import SearchOptions, TrialRecord
from dgkd.search.reporter import SearchReporter

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from dgkd.study import Study

__all__ = ["OptunaBackend", "trial_threads"]


class OptunaBackend(SearchBackend):
    """Optuna's samplers and pruners over a shared storage, ``opts.workers`` processes."""

    name: ClassVar[str] = "optuna"
    batches: ClassVar[bool] = True

    def preflight(self, study: Study, opts: SearchOptions) -> None:
        """Storage reachable, and not holding this study with another space or config."""
        check_storage(study, opts)

    def inspect_command(self, study: Study, opts: SearchOptions) -> str | None:
        """``optuna trials ...`` for this study's storage."""
        return inspect_command(study, opts)

    def run(
        self, study: Study, opts: SearchOptions, *, log: Log | None = None
    ) -> list[TrialRecord]:
        """Run ``study`` with Optuna until ``opts.trials`` trials have finished; every record.

        Raises:
            SearchInputError: unreachable storage, or a worker hit bad input.
            RuntimeError: a worker failed.
            KeyboardInterrupt: interrupted (the interrupted trials are re-enqueued).
        """
        with Quiet(None):  # threads: set where the trials run (_run or each process)
            return _run(study, opts, log or print_line)


def trial_threads(study: Study, opts: SearchOptions) -> int:
    """The torch threads each trial trains on: its config's ``threads``, or with 0 the share of
    the cores its worker process sets (what the banner states, so it must be this)."""
    return base_config(study, opts).threads or threads_per_worker(opts.workers)


def _processes(opts: SearchOptions, total: int, trials: Sequence[FrozenTrial]) -> int:
    """``opts.workers``, but no more than there are trials (batches) left to claim: a process
    that finds nothing to run would only have imported torch for nothing."""
    left = max(1, total - occupied(trials))
    return max(1, min(opts.workers, math.ceil(left / max(1, opts.batch or 1))))


def _run(study: Study, opts: SearchOptions, log: Log) -> list[TrialRecord]:
    storage = open_for_search(study, opts, log)
    Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
    ostudy = create_or_load(study, opts, storage)
    recovered = recover(ostudy, storage, journal=not is_url(opts.storage))
    grid, total = grid_size(study), trial_total(study, opts)
    opts = replace(opts, workers=_processes(opts, total, ostudy.get_trials(deepcopy=False)))
    notes = [f"{opts.workers} worker(s) x {trial_threads(study, opts)} thread(s)"]
    notes.append(f"storage {storage_label(opts)}")
    if recovered:
        notes.append(f"re-enqueued interrupted trial(s) {', '.join(map(str, recovered))}")
    if grid and grid < opts.trials:
        notes.append(f"the grid has only {grid} points")
    with SearchReporter(study, opts, total=total, log=log) as reporter:
        reporter.start(to_records(ostudy.get_trials(deepcopy=False)), note="; ".join(notes))
        try:
            if opts.workers == 1:  # here, on the threads a worker process would set
                worker = Worker(
                    study, opts, total=total, index=0, storage=storage, on_change=reporter.update
                )
                previous = set_threads(threads_per_worker(1))
                try:
                    worker.loop()
                finally:
                    set_threads(previous)
            else:
                run_processes(study, opts, total, ostudy, reporter)
        except KeyboardInterrupt:
            records = to_records(ostudy.get_trials(deepcopy=False))
            reporter.update(records)
            stop_interrupted(study, opts, records, total, log)
            raise
        records = to_records(ostudy.get_trials(deepcopy=False))
        reporter.update(records)
    return records

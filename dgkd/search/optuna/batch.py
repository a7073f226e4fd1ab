"""A batch: trials asked of the sampler together and trained as one population.

Every trial runs in a batch (of one unless ``--batch`` says more). Each trial of a batch runs
in its own thread inside Optuna's ``optimize`` (so each keeps its RDB heartbeat, its pruning
and its state as a single trial does); the thread hands its job to the :class:`Batch` and
waits, and the worker's main thread trains every job at once with
:func:`dgkd.search.trial.train_trials`. Outcomes are handed out when the whole batch has
trained: a pruned trial's seeds leave the population at once, its thread ends with the batch.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from dgkd.errors import one_line
from dgkd.search.trial import TrialJob, TrialOutcome, train_trials

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Batch", "BatchFailed"]


class Batch:
    """The trials of one batch: each runs in its own thread (Optuna's ``optimize``, so each has
    its RDB heartbeat and is told its state as usual), hands its job over and waits; the main
    thread trains every job as one population and hands each trial its outcome at the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[TrialJob] = []
        self._dirs: list[Path] = []
        self.trials: list[Any] = []  # the jobs' ``optuna.Trial``, in order
        self.reenqueued: set[int] = set()  # numbers of the trials the main thread re-enqueued
        self._results: list[TrialOutcome | BaseException] = []
        self._error: BaseException | None = None  # what stopped the whole batch
        self._done = threading.Event()
        self.thread_errors: list[BaseException] = []

    def submit(self, job: TrialJob, directory: Path, trial: Any) -> int | None:
        """Add a trial; its index, or None when the batch already stopped."""
        with self._lock:
            if self._done.is_set():
                return None
            self._jobs.append(job)
            self._dirs.append(directory)
            self.trials.append(trial)
            return len(self._jobs) - 1

    def outcome(self, index: int | None) -> TrialOutcome | BaseException:
        """Trial ``index``'s outcome (or what its run raised) once the batch has trained.

        Raises:
            KeyboardInterrupt: the batch was interrupted.
            BatchFailed: the batch failed for a reason that is no one trial's.
        """
        self._done.wait()
        error = self._error
        if isinstance(error, KeyboardInterrupt) or index is None:
            raise KeyboardInterrupt  # a new one per thread: they do not share a traceback
        if error is not None:
            raise BatchFailed(one_line(error))
        return self._results[index]

    @property
    def trained(self) -> bool:
        """Whether the batch trained and handed out its outcomes."""
        return self._done.is_set() and self._error is None

    def train(self, metric: str) -> None:
        """Train the batch (in the main thread, where Ctrl-C and SIGTERM land) and hand out
        the outcomes; if it raises, the caller ends the batch with :meth:`stop`."""
        with self._lock:
            jobs, dirs = list(self._jobs), list(self._dirs)
        if jobs:  # the first trial's directory holds the batch's state: its re-run resumes it
            self._results = train_trials(jobs, metric=metric, checkpoint=dirs[0])
        self._done.set()

    def stop(self, exc: BaseException) -> None:
        """End the batch with ``exc`` (interrupted or failed): every waiting trial raises."""
        with self._lock:
            self._error = exc
            self._done.set()


class BatchFailed(Exception):
    """A batch failed for a reason that is no one trial's (each of its trials records it)."""

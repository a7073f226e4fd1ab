"""The body of one search trial, shared by every backend.

Backends differ in how they pick parameters and record results; what a trial *does* is the same:
train the configured student, reporting the per-epoch metrics to the backend (which may stop the
run by raising from ``report``), and return the final metrics. Data and the teacher are memoized
per process by :mod:`dgkd.data` and :mod:`dgkd.teacher`, so a worker pays for them once.
"""

from __future__ import annotations

from collections.abc import Callable

from dgkd.config import TrainConfig
from dgkd.io import json_metrics as clean_metrics
from dgkd.runtime import available_cores, set_threads, threads_per_worker

__all__ = ["available_cores", "clean_metrics", "run_trial", "set_threads", "threads_per_worker"]

Report = Callable[[int, dict[str, float]], None]


def run_trial(cfg: TrainConfig, report: Report | None) -> dict[str, float]:
    """Train ``cfg`` and return ``train()``'s final metrics.

    Args:
        cfg: The trial's full configuration.
        report: Called as ``report(epoch, row)`` after every epoch (``row["val_acc"]``); it may
            raise (e.g. ``optuna.TrialPruned``) to stop the run, and the exception propagates.

    Raises:
        dgkd.loop.DivergedError: the loss became non-finite (the backend records a failure).
    """
    from dgkd.train import train

    return dict(train(cfg, report=report).metrics)

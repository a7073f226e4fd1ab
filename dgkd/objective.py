"""The body of one search trial, shared by every backend.

Backends differ in how they pick parameters and record results; what a trial *does* is the same:
train the configured student, reporting the per-epoch metrics to the backend (which may stop the
run by raising from ``report``), and return the final metrics. Data and the teacher are memoized
per process by :mod:`dgkd.data` and :mod:`dgkd.teacher`, so a worker pays for them once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from dgkd.train import TrainConfig

__all__ = ["available_cores", "clean_metrics", "run_trial", "set_threads", "threads_per_worker"]

Report = Callable[[int, dict[str, float]], None]


def run_trial(cfg: TrainConfig, report: Report | None) -> dict[str, float]:
    """Train ``cfg`` and return ``train()``'s final metrics.

    Args:
        cfg: The trial's full configuration.
        report: Called as ``report(epoch, row)`` after every epoch (``row["val_acc"]``); it may
            raise (e.g. ``optuna.TrialPruned``) to stop the run, and the exception propagates.

    Raises:
        dgkd.train.DivergedError: the loss became non-finite (the backend records a failure).
    """
    from dgkd.train import train

    return dict(train(cfg, report=report).metrics)


def clean_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics as plain floats, NaN and infinities as None (JSON and databases reject them)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        value = float(value)
        out[key] = value if math.isfinite(value) else None
    return out


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` processes: ``max(1, cores // workers)``.

    An explicit ``OMP_NUM_THREADS`` caps it, so a user (or a test) can ask for fewer threads.
    """
    threads = max(1, available_cores() // max(1, workers))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) >= 1:
        threads = min(threads, int(cap))
    return threads


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count; returns the previous value (to restore it)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    return previous

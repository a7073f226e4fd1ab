"""Backend-neutral records of a search, so both backends feed the same exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SearchOptions", "TrialRecord"]


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (the ``dgkd-search`` flags), independent of what is searched."""

    trials: int  # total across all workers and restarts
    out_dir: Path  # runs/<study>/
    workers: int = 1  # processes on this machine (Optuna backend)
    backend: str = "optuna"  # optuna | ray
    storage: str | None = None  # Optuna RDB URL; None = journal file under out_dir
    address: str | None = None  # Ray cluster address; None = RAY_ADDRESS or a local cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    fresh: bool = False  # move old results aside and start over
    quiet: bool = False  # plain log lines instead of a live display
    overrides: dict[str, Any] = field(default_factory=dict)  # --set changes to the base config


@dataclass
class TrialRecord:
    """One trial as exported to ``trials.csv``: the same columns whichever backend ran it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # the study's metric; None unless COMPLETE
    params: dict[str, Any]
    duration_s: float | None = None
    pruned_epoch: int | None = None  # last epoch reported before pruning
    metrics: dict[str, float] = field(default_factory=dict)  # train()'s final metrics
    fail_reason: str = ""  # e.g. the DivergedError message
    fail_epoch: int | None = None

"""Backend-neutral records of a search, so both backends feed the same exports.

Torch-free and library-free: the ablation, the exports and both backends import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from dgkd.config import TrainConfig
from dgkd.runtime import available_cores

__all__ = [
    "FINAL_STATES",
    "INTERRUPTED",
    "SearchInputError",
    "SearchOptions",
    "TrialRecord",
    "TrialState",
    "completed",
    "counts_toward_total",
    "finished",
    "option_default",
]

# fail_reason prefix of a trial cut off by an interruption and re-run under a new number: it
# keeps its number (none is lost) but does not count toward --trials.
INTERRUPTED = "interrupted"


class SearchInputError(ValueError):
    """Bad input to a search (options, storage, cluster address); exit code 2."""


class TrialState(StrEnum):
    """A trial's state; its value is what ``trials.csv`` and ``best.json`` hold."""

    COMPLETE = "COMPLETE"  # ran to the end with a finite value
    PRUNED = "PRUNED"  # stopped early by the pruner (scheduler)
    FAIL = "FAIL"  # diverged, raised, or was interrupted (see ``fail_reason``)
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # queued, not started


FINAL_STATES = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})  # finished


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (the ``dgkd-search`` flags), independent of what is searched.

    The defaults here are the only ones: :func:`dgkd.search.make_options` and the command line
    take theirs from this class.
    """

    trials: int  # total across all workers and restarts
    out_dir: Path  # runs/<study>/
    # Processes on this machine (Optuna backend): by default one per usable core (--workers
    # auto), so the bare command uses the machine; each trial runs on its config's threads.
    workers: int = field(default_factory=available_cores)
    backend: str = "optuna"  # optuna | ray
    storage: str | None = None  # Optuna RDB URL or journal path; None = out_dir/journal.log
    address: str | None = None  # Ray cluster address; None = RAY_ADDRESS or a local cluster
    cpus_per_trial: float = 1.0  # Ray: CPUs each trial holds
    gpus_per_trial: float = 0.0  # Ray: GPUs each trial holds (fractions allowed)
    fresh: bool = False  # move old results aside and start over
    quiet: bool = False  # plain log lines instead of a live display
    overrides: dict[str, Any] = field(default_factory=dict)  # --set changes to the base config
    mlflow: str | None = None  # MLflow tracking URI: log every trial there (needs the extra)
    n_seeds: int | None = None  # seeds per trial; None = the study's
    batch: int | None = None  # trials trained as one population (Optuna); None = the study's
    confirm_top: int | None = None  # configs the confirm stage retrains; None = the study's
    n_confirm_seeds: int | None = None  # fresh seeds per config there; None = the study's
    confirm_teachers: int | None = None  # teacher seeds those run under; None = the study's
    # The base config ``overrides`` make with the study, resolved once by make_options so a
    # search does not revalidate them at every turn; None = resolve where needed
    # (dgkd.search.common.base_config). Not shown: it repeats the study and the overrides.
    base: TrainConfig | None = field(default=None, repr=False)


def option_default(name: str) -> Any:
    """The default of the :class:`SearchOptions` field ``name`` (for flags and their help);
    one made by a factory is made now (``workers``: this machine's usable cores)."""
    for f in fields(SearchOptions):
        if f.name == name and f.default is not MISSING:
            return f.default
        if f.name == name and f.default_factory is not MISSING:
            return f.default_factory()
    raise KeyError(f"SearchOptions.{name} has no default")


@dataclass
class TrialRecord:
    """One trial as exported to ``trials.csv``: the same columns whichever backend ran it."""

    number: int
    state: TrialState
    value: float | None  # the study's metric; None unless COMPLETE
    params: dict[str, Any]
    duration_s: float | None = None
    pruned_epoch: int | None = None  # last epoch reported before pruning
    metrics: dict[str, float] = field(default_factory=dict)  # train()'s final metrics
    fail_reason: str = ""  # e.g. the DivergedError message
    fail_epoch: int | None = None
    curve: dict[int, float] = field(default_factory=dict)  # the metric by epoch (1-based)
    seeds: tuple[int, ...] = ()  # the seeds the trial trained (its population)
    seed_metrics: list[dict[str, float]] = field(default_factory=list)  # final metrics per seed

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)  # a plain "COMPLETE" from a caller or a file


def counts_toward_total(record: TrialRecord) -> bool:
    """A finished trial that counts toward ``--trials`` (not one re-run after an interruption)."""
    if record.state not in FINAL_STATES:
        return False
    return not (record.state == TrialState.FAIL and record.fail_reason.startswith(INTERRUPTED))


def finished(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Records in a final state (COMPLETE, PRUNED, FAIL), by number."""
    return sorted((r for r in records if r.state in FINAL_STATES), key=lambda r: r.number)


def completed(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The COMPLETE records with a finite value, in the order given."""
    return [
        r
        for r in records
        if r.state == TrialState.COMPLETE and r.value is not None and math.isfinite(r.value)
    ]

"""What every backend does the same way: resume checks, budget, interruption.

A backend differs in how it picks parameters, schedules trials and stores results; what a
resumed search must share with the stored one, how many trials a search runs and what an
interrupted search leaves behind are the same everywhere, and live here (what a trial *does*
is in :mod:`dgkd.search.trial`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from dgkd.config import NEUTRAL_FIELDS
from dgkd.search.export import write_search_outputs
from dgkd.search.records import (
    SearchInputError,
    SearchOptions,
    TrialRecord,
    counts_toward_total,
)

if TYPE_CHECKING:
    from dgkd.config import TrainConfig
    from dgkd.study import Study

__all__ = [
    "LOCAL_FIELDS",
    "Log",
    "base_config",
    "check_signature",
    "grid_size",
    "is_finite_number",
    "print_line",
    "signature",
    "stop_interrupted",
    "trial_seeds",
    "trial_total",
]

Log = Callable[[str], None]  # where one-line notices go

# Config fields that do not change results: a resumed search may differ in them. eval_every
# changes only which epochs a trial reports (its final metrics are the same), so trials stay
# comparable across a change of it.
LOCAL_FIELDS = ("data_root", "download", "device", "eval_batch_size", "eval_every", *NEUTRAL_FIELDS)
_SIGNATURE_KEYS = ("backend", "direction", "metric", "space", "config", "seeds")


def print_line(line: str) -> None:
    """The default :data:`Log`: the line on stdout, flushed (progress seen through pipes)."""
    print(line, flush=True)


def is_finite_number(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a real, finite number (not a bool, None, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- budget -----------------------------------------------------------------------------------


def grid_size(study: Study) -> int | None:
    """Points of a grid study's space; None for any other sampler."""
    if study.sampler != "grid":
        return None
    return math.prod(len(values) for values in (study.space.grid() or {}).values())


def base_config(study: Study, opts: SearchOptions) -> TrainConfig:
    """The representative config ``opts.overrides`` make with ``study``: ``opts.base``, which
    :func:`~dgkd.search.make_options` resolves once per search, else resolved now (options built
    directly, as tests do).

    Raises:
        ConfigError: an override is invalid or names a space parameter (only when resolved now).
    """
    return opts.base if opts.base is not None else study.check_overrides(opts.overrides)


def trial_seeds(study: Study, opts: SearchOptions) -> list[int]:
    """The seeds every trial trains (the same in every trial, so trials compare paired)."""
    return study.trial_seeds(n_seeds=opts.n_seeds, base=base_config(study, opts))


def trial_total(study: Study, opts: SearchOptions) -> int:
    """Trials the search runs to: ``--trials``, or fewer when the grid is smaller."""
    grid = grid_size(study)
    return min(opts.trials, grid) if grid else opts.trials


# --- resume -----------------------------------------------------------------------------------


def signature(study: Study, opts: SearchOptions) -> dict[str, Any]:
    """What a resumed search must share with the stored one (else its trials would not compare):
    backend, metric, direction, space, trial seeds and the base config less the searched and
    local-only fields."""
    from optuna.distributions import distribution_to_json

    searched = {p.name for p in study.space.searched()}
    base = base_config(study, opts)
    cfg = base.to_dict()
    return {
        "backend": opts.backend,
        "metric": study.metric,
        "direction": study.direction,
        "space": {k: distribution_to_json(d) for k, d in study.space.distributions().items()},
        "config": {k: v for k, v in cfg.items() if k not in searched and k not in LOCAL_FIELDS},
        "seeds": study.trial_seeds(n_seeds=opts.n_seeds, base=base),
    }


def _mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """What differs between a stored :func:`signature` and the wanted one; keys the stored one
    lacks (a search from before they were recorded) are not compared."""
    for key in _SIGNATURE_KEYS:
        if key not in stored or stored[key] == wanted[key]:
            continue
        old, new = stored[key], wanted[key]
        if key == "space":
            return "search space"
        if key == "config":
            old = old or {}
            diff = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            return f"config ({diff} {old.get(diff)!r}, now {new.get(diff)!r})"
        return f"{key} {old} (now {new})"
    return None


def check_signature(stored: Mapping[str, Any], wanted: Mapping[str, Any], *, holder: str) -> None:
    """Refuse to resume a search stored with another metric, direction, space or config.

    Args:
        stored: The stored signature ({} when nothing is stored).
        wanted: :func:`signature` of the search about to run.
        holder: Who holds the stored one, e.g. ``runs/smoke/journal.log holds study smoke``.

    Raises:
        SearchInputError: with what differs and what to do about it.
    """
    what = _mismatch(stored, wanted)
    if what:
        raise SearchInputError(
            f"{holder} with another {what}; rerun with the same study and --set options, "
            "or add --fresh to move the old one aside"
        )


# --- interruption -----------------------------------------------------------------------------


def stop_interrupted(
    study: Study, opts: SearchOptions, records: Sequence[TrialRecord], total: int, log: Log
) -> None:
    """Write what an interrupted search has and say how to continue; the caller re-raises.

    The backend has saved its own state (journal, Tune's experiment), so rerunning the same
    command picks up where this one stopped.
    """
    write_search_outputs(study, records, opts.out_dir, overrides=opts.overrides)
    done = sum(counts_toward_total(r) for r in records)
    log(f"interrupted at {done}/{total} trials; rerun the same command to continue")

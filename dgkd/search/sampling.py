"""The study's sampler and pruner as Optuna objects, for both backends.

The Optuna backend uses both; the Ray backend hands the sampler to Tune's ``OptunaSearch`` (its
pruning is a Tune scheduler). Optuna is imported on first use, so importing this module is light.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    from dgkd.study import Study

__all__ = ["MEDIAN_STARTUP_TRIALS", "make_pruner", "make_sampler"]

MEDIAN_STARTUP_TRIALS = 10  # complete trials before the median pruner compares


def make_sampler(study: Study, *, seed: int | None = None) -> BaseSampler:
    """The study's sampler, seeded (``seed`` defaults to the study's)."""
    import optuna

    seed = study.seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if study.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if study.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if study.sampler == "grid":
            return optuna.samplers.GridSampler(study.space.grid() or {}, seed=seed)
        if study.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if study.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {study.sampler!r}")


def make_pruner(study: Study, epochs: int, warmup: int = 0) -> BasePruner:
    """The study's pruner for trials of ``epochs`` epochs (steps are epochs, 1-based).

    Median: a trial is compared with the median of the complete trials only after 10 of them
    (TPE's random start-up), so the bar is a spread of parameter values rather than the best
    few; from the later of the distillation warmup (``warmup`` epochs, when trials still differ
    little) and a quarter of the epochs; and every eighth of the epochs, not every epoch, so
    that validation noise (0.25% per example on MNIST-1D's 400) is not tested at every step.
    Hyperband: budgets from an eighth of the epochs to all of them.
    """
    import optuna

    warmup = min(max(warmup, epochs // 4), max(0, epochs - 1))
    if study.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS,
            n_warmup_steps=warmup,
            interval_steps=max(1, epochs // 8),
        )
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, epochs // 8), max_resource=max(1, epochs), reduction_factor=3
        )
    return optuna.pruners.NopPruner()

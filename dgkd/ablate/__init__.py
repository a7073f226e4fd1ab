"""Paired ablations of DGKD: variants x seeds, resumable, with the statistics a reviewer asks for.

An ablation resolves one *base* configuration (the defaults, a study's base, or a study's best
trial; ``--set`` on top), derives each variant from it by changing exactly the fields the variant
names, and runs every (variant, seed) cell on the same seeds, split and teacher, so two cells on
one seed differ by their variant alone. Typical use::

    base = resolve_base(overrides={"epochs": 20})
    result = run_ablation(base, AblationOptions(variants=("no_grad_term",), n_seeds=10))
    print_summary(result)

The cells train in populations (every variant and seed that can share one, K students in one
set of tensor operations), each cell exactly its own ``train(cfg)`` run.

Modules: ``variants`` (the registry), ``base`` (base config resolution), ``options``,
``cells`` and ``store`` (the runs, their populations and their files), ``curves`` (per-epoch
curve summaries: ``nc1_auc``), ``plan``, ``executors`` (in-process, process pool, Ray),
``runner``, ``summary`` and ``claims`` (statistics), ``result``, ``report``, ``plot`` and
``export`` (tables, markdown, PNG).
"""

from __future__ import annotations

from dgkd.ablate.base import BaseConfig, resolve_base
from dgkd.ablate.errors import AblateError, BaseConfigChangedError, CellFailedError
from dgkd.ablate.options import AblationOptions
from dgkd.ablate.plan import Plan, preflight
from dgkd.ablate.report import describe_base, print_summary
from dgkd.ablate.result import AblationResult
from dgkd.ablate.runner import run_ablation
from dgkd.ablate.variants import REFERENCE, VARIANTS, Variant, parse_variants

__all__ = [
    "REFERENCE",
    "VARIANTS",
    "AblateError",
    "AblationOptions",
    "AblationResult",
    "BaseConfig",
    "BaseConfigChangedError",
    "CellFailedError",
    "Plan",
    "Variant",
    "describe_base",
    "parse_variants",
    "preflight",
    "print_summary",
    "resolve_base",
    "run_ablation",
]

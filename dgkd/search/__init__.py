"""Hyperparameter search over a study's space, with Optuna or Ray Tune (``dgkd-search``).

Modules, from the entry points down (each imports only those below it):

- :mod:`.orchestrate`: :func:`make_options`, :func:`run_search`, :func:`best_params`,
  :func:`print_summary`.
- :mod:`.registry` and :mod:`.base`: backends by name, and the interface they implement.
- :mod:`.optuna` and :mod:`.ray`: the two backends, the only places importing their libraries.
- :mod:`.reporter`, :mod:`.common`, :mod:`.sampling`: live progress, what every backend does the
  same way, the study's sampler and pruner.
- :mod:`.export`, :mod:`.plots`: the result files and figures.
- :mod:`.records`: trial records, states and options (no torch, no library).
"""

from dgkd.search.orchestrate import best_params, make_options, print_summary, run_search
from dgkd.search.records import (
    SearchInputError,
    SearchOptions,
    TrialRecord,
    TrialState,
    counts_toward_total,
)
from dgkd.search.reporter import SearchReporter

__all__ = [
    "SearchInputError",
    "SearchOptions",
    "SearchReporter",
    "TrialRecord",
    "TrialState",
    "best_params",
    "counts_toward_total",
    "make_options",
    "print_summary",
    "run_search",
]

"""dgkd: hyperparameter search and ablation harness for Decoupled Gradient Knowledge Distillation.

The public API, importable from here::

    from dgkd import TrainConfig, train, train_population, dgkd_loss, load_study, run_search
    from dgkd import load_run  # a saved run's student, config and data splits

Names are resolved on first use (PEP 562), so ``import dgkd`` and every ``--help`` stay
torch-free and fast; a name's module is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ConfigError": "dgkd.config",
    "TrainConfig": "dgkd.config",
    "parse_overrides": "dgkd.config",
    "DivergedError": "dgkd.loop",
    "TrainResult": "dgkd.train",
    "train": "dgkd.train",
    "train_population": "dgkd.train",
    "dgkd_loss": "dgkd.losses",
    "dkd_terms": "dgkd.losses",
    "grad_terms": "dgkd.losses",
    "kd_loss": "dgkd.losses",
    "build_model": "dgkd.models",
    "SavedRun": "dgkd.saved",
    "load_run": "dgkd.saved",
    "Method": "dgkd.methods",
    "Study": "dgkd.study",
    "load_study": "dgkd.study",
    "load_space": "dgkd.space",
    "SearchOptions": "dgkd.search",
    "make_options": "dgkd.search",
    "run_search": "dgkd.search",
    "AblationOptions": "dgkd.ablate",
    "run_ablation": "dgkd.ablate",
    "load_suite": "dgkd.suite",
    "run_suite": "dgkd.suite",
}

__all__ = [
    "AblationOptions",
    "ConfigError",
    "DivergedError",
    "Method",
    "SavedRun",
    "SearchOptions",
    "Study",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "build_model",
    "dgkd_loss",
    "dkd_terms",
    "grad_terms",
    "kd_loss",
    "load_run",
    "load_space",
    "load_study",
    "load_suite",
    "make_options",
    "parse_overrides",
    "run_ablation",
    "run_search",
    "run_suite",
    "train",
    "train_population",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from dgkd.ablate import AblationOptions, run_ablation
    from dgkd.config import ConfigError, TrainConfig, parse_overrides
    from dgkd.loop import DivergedError
    from dgkd.losses import dgkd_loss, dkd_terms, grad_terms, kd_loss
    from dgkd.methods import Method
    from dgkd.models import build_model
    from dgkd.saved import SavedRun, load_run
    from dgkd.search import SearchOptions, make_options, run_search
    from dgkd.space import load_space
    from dgkd.study import Study, load_study
    from dgkd.suite import load_suite, run_suite
    from dgkd.train import TrainResult, train, train_population


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dgkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

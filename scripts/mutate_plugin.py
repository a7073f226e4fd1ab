"""pytest plugin for ``make mutate`` (loaded by ``[tool.mutmut] pytest_add_cli_args``).

Two things that make a mutation run practical on a small machine, neither changing a verdict:

* Order: a mutant's tests run with ``-x``, so the first failure ends the run. Its own module's
  test file goes first (``dgkd.stats`` -> ``tests/test_stats.py``), the tests that train
  (``test_train.py``) and load data (``test_data.py``) last, and within each group the fastest
  first (mutmut's clean run timed every test): a killed mutant rarely pays for a training run
  or a whole small search.
* Warm caches: mutmut forks every mutant's test run from one server process, which first
  collects the tests (``--collect-only``). Here that server also loads MNIST-1D and trains the
  tests' shared teacher once, with the unmutated code, so the forked runs find both in memory
  instead of rebuilding them in their fresh cache directories.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import pytest

__all__ = ["pytest_collection_finish", "pytest_collection_modifyitems"]

_LAST = {"test_data.py": 1, "test_train.py": 2, "test_population_paths.py": 3}


def _warm_configs() -> list:
    """The teachers of the selected training tests (``tiny`` and its no-validation variant)."""
    from dgkd.config import TrainConfig

    tiny = TrainConfig(teacher_epochs=2, val_pool=200, test_pool=400)  # tests/conftest.py
    return [tiny, tiny.replace(val_pool=0, val_fraction=0.0, teacher_width=16)]


# Modules whose tests are not named after their first name below ``dgkd``.
_OWN = {
    "dgkd.step": "test_losses_population.py",
    "dgkd.search.verdict": "test_verdict_numbers.py",
    "dgkd.search.confirm": "test_confirm.py",
    "dgkd.search.seeds": "test_seeds.py",
    "dgkd.search.trial": "test_trial.py",
    "dgkd.ablate.summary": "test_summary_numbers.py",
    "dgkd.ablate.claims": "test_claims.py",
}


def _own_file(mutant: str) -> str | None:
    """``dgkd.losses.fused.x__dgkd__mutmut_3`` -> ``test_losses.py``."""
    parts = mutant.split(".")
    for module, name in _OWN.items():
        if mutant.startswith(module + "."):
            return name
    return f"test_{parts[1]}.py" if len(parts) > 2 and parts[0] == "dgkd" else None


@functools.cache
def _durations() -> dict[str, float]:
    """Each test's time in mutmut's clean run (``mutants/mutmut-stats.json``; the tests run in
    ``mutants/``); empty before that run."""
    try:
        return dict(json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    own = _own_file(mutant)
    durations = _durations()

    def key(item: pytest.Item) -> tuple[int, int, float]:
        name = Path(item.nodeid.split("::")[0]).name
        return (0 if name == own else 1, _LAST.get(name, 0), durations.get(item.nodeid, 0.0))

    items.sort(key=key)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly or os.environ.get("MUTANT_UNDER_TEST") != "":
        return
    import torch

    from dgkd.teacher import load_teacher
    from dgkd.train import splits_for

    old = os.environ.get("DGKD_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DGKD_CACHE"] = cache
        try:
            for cfg in _warm_configs():
                load_teacher(cfg, splits_for(cfg), device=torch.device("cpu"))
        finally:
            if old is None:
                os.environ.pop("DGKD_CACHE", None)
            else:
                os.environ["DGKD_CACHE"] = old

"""Shared fixtures: an isolated cache for the whole session and a tiny training config; the
groups of tests that pytest-xdist keeps in one process.

The session cache holds the MNIST-1D arrays and the teachers, so each is built once per test
session, or once per pytest-xdist process (and subprocesses started by tests share it through the
environment). Tiny models on two cores run far faster on one intra-op thread than on two that
compete with pytest's other work.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported; inherited by subprocesses

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import TINY_POOLS

from dgkd.config import TrainConfig
from dgkd.state import PopulationState

torch.set_num_threads(1)

# `make test` runs the suite in two processes (pytest-xdist, --dist loadgroup). Each group below
# goes whole to one of them, its tests one after another: the tests that start a Ray cluster (one
# cluster at a time on the machine) and the modules whose module-scoped fixture runs a search
# (once, not once per process). Entries are test id prefixes, relative to the repository root.
XDIST_GROUPS = {
    "ray": (
        "tests/search/ray/test_ray_backend.py::",
        "tests/search/ray/test_ray_trial_resume.py::",
        "tests/ablate/test_executors.py::test_ray_tasks_give_the_same_metrics",
        "tests/test_benchmarks.py::test_quick_mode_writes_a_report",  # its search comparison
    ),
    "search-outputs": ("tests/search/test_outputs.py::",),
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadgroup``, xdist's own scheduling with :data:`XDIST_GROUPS` added (its
    ``xdist_group`` marks are lost on pytest 9, which no longer lets a plugin rename a test)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Groups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for group, prefixes in XDIST_GROUPS.items():
                if nodeid.startswith(prefixes):
                    return group
            return super()._split_scope(nodeid)

    return Groups(config, log)


@pytest.fixture(scope="session", autouse=True)
def dgkd_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``$DGKD_CACHE`` at a session temp dir (data + teachers), restored afterwards."""
    path = tmp_path_factory.mktemp("dgkd-cache")
    old = os.environ.get("DGKD_CACHE")
    os.environ["DGKD_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DGKD_CACHE", None)
    else:
        os.environ["DGKD_CACHE"] = old


@pytest.fixture
def tiny() -> TrainConfig:
    """Default MNIST-1D setup trained for 2 epochs (teacher too), validated and tested on small
    generated pools (:data:`fakes.TINY_POOLS`): well under a second a run."""
    return TrainConfig(epochs=2, teacher_epochs=2, **TINY_POOLS)


@pytest.fixture
def count_trained_epochs(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[int]]:
    """Call it to start recording every epoch a run trains from then on (checkpoint or not):
    a resumed run trains only the epochs its checkpoint lacks."""
    from dgkd import checkpoint as ckpt

    def start() -> list[int]:
        trained: list[int] = []
        epoch_end = ckpt.Keeper.epoch_end

        def count(self: ckpt.Keeper, state: PopulationState) -> None:
            trained.append(state.epoch)
            epoch_end(self, state)

        monkeypatch.setattr(ckpt.Keeper, "epoch_end", count)
        return trained

    return start


@pytest.fixture
def usable_cores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[int], None]:
    """Call it with ``n`` to make this process see ``n`` usable cores: its affinity mask, and
    no cgroup CPU quota (so ``--workers auto`` means ``n`` whatever machine runs the test)."""
    from dgkd import runtime

    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
        for name in ("CGROUP_V2_CPU_MAX", "CGROUP_V1_QUOTA", "CGROUP_V1_PERIOD"):
            monkeypatch.setattr(runtime, name, tmp_path / "no-cgroup" / name)

    return set_cores

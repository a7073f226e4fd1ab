"""Shared fixtures: an isolated cache for the whole session and a tiny training config.

The session cache holds the MNIST-1D arrays and the teachers, so each is built once per test
session (and subprocesses started by tests share it through the environment). Tiny models on two
cores run far faster on one intra-op thread than on two that compete with pytest's other work.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported; inherited by subprocesses

import pytest
import torch

from dgkd.config import TrainConfig

torch.set_num_threads(1)


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
    """Default MNIST-1D setup trained for 2 epochs (teacher too): well under a second a run."""
    return TrainConfig(epochs=2, teacher_epochs=2)

"""Shared pieces of the ablation tests: a tiny base, the expected variant changes, readers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fakes import TINY_POOLS

from dgkd.ablate import AblationOptions
from dgkd.config import TrainConfig

TINY = {"epochs": 2, "teacher_epochs": 2, **TINY_POOLS}

EXPECTED = {
    "full": {},
    "no_grad_term": {"epsilon": 0.0},
    "minimize_mse": {"grad_sign": 1.0},
    "raw_mse": {"grad_term": "raw"},
    "kd": {"method": "kd"},
    "ce": {"method": "ce"},
    "tckd_only": {"beta": 0.0, "epsilon": 0.0},
    "nckd_only": {"alpha": 0.0, "epsilon": 0.0},
}


def opts(tmp_path: Path, **kw: Any) -> AblationOptions:
    kw.setdefault("variants", ("no_grad_term", "minimize_mse"))
    kw.setdefault("n_seeds", 2)
    kw.setdefault("workers", 1)  # in this process, where the tests patch what a cell runs
    kw.setdefault("teachers", 1)
    return AblationOptions(out_dir=tmp_path, **kw)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def diff(a: TrainConfig, b: TrainConfig) -> dict[str, Any]:
    da, db = a.to_dict(), b.to_dict()
    return {k: db[k] for k in da if da[k] != db[k]}


def same_cells(a_cells: list[Any], b_cells: list[Any]) -> None:
    import pytest

    for a, b in zip(a_cells, b_cells, strict=True):
        assert (a.variant, a.seed, a.config_hash) == (b.variant, b.seed, b.config_hash)
        assert a.metrics["test_acc"] == b.metrics["test_acc"]
        assert a.metrics["test_kl_to_teacher"] == pytest.approx(b.metrics["test_kl_to_teacher"])

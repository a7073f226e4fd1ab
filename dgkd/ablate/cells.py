"""Cells: one (variant, seed) run each, planned seed-major, and the body every executor runs.

Every cell of an ablation shares the base's seeds, validation split and teacher (``teacher_seed``
and the split live in the base and no variant touches them), so two cells on the same seed
differ by their variant alone: a paired comparison.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dgkd.ablate.base import config_hash
from dgkd.ablate.variants import VARIANTS
from dgkd.config import TrainConfig
from dgkd.io import finite_or_none

__all__ = ["Cell", "CellResult", "plan_cells", "run_cell"]


@dataclass(frozen=True)
class Cell:
    """One (variant, seed) run of an ablation."""

    variant: str
    seed: int
    config: TrainConfig

    @property
    def key(self) -> str:
        """The cell's file name stem: ``<variant>-seed<seed>``."""
        return _key(self.variant, self.seed)

    @property
    def hash(self) -> str:
        """:func:`~dgkd.ablate.base.config_hash` of the cell's full config."""
        return config_hash(self.config)

    @property
    def teacher_key(self) -> str:
        """The teacher the cell distills from: its checkpoint, or its cache key."""
        from dgkd.teacher import teacher_key

        return self.config.teacher_checkpoint or teacher_key(self.config)


def _key(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def plan_cells(base: TrainConfig, variants: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """Every (variant, seed) cell, seed-major, so an interrupted run leaves complete pairs."""
    return [
        Cell(name, seed, VARIANTS[name].apply(base).replace(seed=seed))
        for seed in seeds
        for name in variants
    ]


@dataclass
class CellResult:
    """A finished cell: its metrics, or where it diverged."""

    variant: str
    seed: int
    status: str  # "ok" | "diverged"
    config_hash: str
    teacher_key: str
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    diverged: dict[str, Any] | None = None  # epoch, step, value, message
    config: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    @property
    def key(self) -> str:
        """The same key as the :class:`Cell` it finished."""
        return _key(self.variant, self.seed)

    def value(self, metric: str) -> float:
        """The metric's value, NaN for a diverged cell or a missing metric."""
        v = self.metrics.get(metric)
        return math.nan if v is None else float(v)

    def to_json(self) -> dict[str, Any]:
        """The cell file's content (NaN metrics as null)."""
        out = dataclasses.asdict(self)
        out["metrics"] = {k: finite_or_none(v) for k, v in self.metrics.items()}
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CellResult:
        """Read back :meth:`to_json` (unknown keys ignored, null metrics as NaN)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in obj.items() if k in names}
        kw["metrics"] = {
            k: (math.nan if v is None else float(v)) for k, v in obj.get("metrics", {}).items()
        }
        return cls(**kw)


def run_cell(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train one cell from its config dict; the body every executor runs.

    Module-level and dict-in/dict-out so that spawned processes and Ray tasks can call it.
    Divergence is a result (it is what some variants do), not a failure.
    """
    from dgkd.loop import DivergedError
    from dgkd.train import train

    cfg = TrainConfig(**config)
    start = time.perf_counter()
    try:
        result = train(cfg)
    except DivergedError as exc:
        return {
            "status": "diverged",
            "metrics": {},
            "duration_s": time.perf_counter() - start,
            "diverged": {
                "epoch": exc.epoch,
                "step": exc.step,
                "value": str(exc.value),
                "message": str(exc),
            },
        }
    return {
        "status": "ok",
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "duration_s": time.perf_counter() - start,
        "diverged": None,
    }

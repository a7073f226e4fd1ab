"""Cells: one (variant, teacher seed, seed) run each, planned teacher by teacher and seed-major
within a teacher, and the body every executor runs.

Every cell of an ablation shares the base's seeds, validation split and teacher seeds (the split
lives in the base and no variant touches it or the teacher), so two cells on the same teacher
and seed differ by their variant alone: a paired comparison. Cells train in populations
(:func:`run_cells`), each member exactly its own ``train(cfg)`` run, so a cell's numbers do not
depend on the population it lands in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dgkd.ablate.base import config_hash
from dgkd.ablate.curves import curve_metrics
from dgkd.ablate.variants import VARIANTS
from dgkd.config import TrainConfig
from dgkd.io import finite_or_none

__all__ = ["Cell", "CellResult", "plan_cells", "plan_populations", "run_cells"]


@dataclass(frozen=True)
class Cell:
    """One (variant, teacher seed, seed) run of an ablation."""

    variant: str
    seed: int
    config: TrainConfig

    @property
    def teacher_seed(self) -> int:
        """The seed of the teacher this cell distills from."""
        return self.config.teacher_seed

    @property
    def key(self) -> str:
        """The cell's file name stem: ``<variant>-teacher<teacher_seed>-seed<seed>``."""
        return _key(self.variant, self.teacher_seed, self.seed)

    @property
    def hash(self) -> str:
        """:func:`~dgkd.ablate.base.config_hash` of the cell's full config."""
        return config_hash(self.config)

    @property
    def teacher_key(self) -> str:
        """The teacher the cell distills from: its checkpoint, or its cache key."""
        from dgkd.teacher import teacher_key

        return self.config.teacher_checkpoint or teacher_key(self.config)


def _key(variant: str, teacher_seed: int, seed: int) -> str:
    return f"{variant}-teacher{teacher_seed}-seed{seed}"


def plan_cells(
    base: TrainConfig,
    variants: Sequence[str],
    seeds: Sequence[int],
    teacher_seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """Every (variant, teacher seed, seed) cell: teacher by teacher, seed-major within one, so
    an interrupted run leaves complete pairs. ``teacher_seeds`` defaults to the base's own."""
    teachers = (base.teacher_seed,) if teacher_seeds is None else tuple(teacher_seeds)
    return [
        Cell(name, seed, VARIANTS[name].apply(base).replace(seed=seed, teacher_seed=teacher))
        for teacher in teachers
        for seed in seeds
        for name in variants
    ]


def plan_populations(cells: Sequence[Cell], *, workers: int, size: int) -> list[list[Cell]]:
    """``cells`` grouped into the populations they train in, in order.

    Cells that can share a population (:func:`dgkd.train.population_groups`: every variant of
    one ablation can) are cut into consecutive runs of at most ``size`` cells, seed-major, so a
    kill loses at most the populations in flight and leaves whole seed pairs behind; and into at
    least ``workers`` populations, a multiple of ``workers`` where there are several rounds, so
    every process has work until the end.
    """
    from dgkd.train import population_groups

    if not cells:
        return []
    per = max(1, min(size, math.ceil(len(cells) / workers)))
    out = []
    for group in population_groups([c.config for c in cells]):
        count = math.ceil(len(group) / per)
        if count > 1:
            count = min(len(group), workers * math.ceil(count / workers))
        start = 0
        for j in range(count):
            n = len(group) // count + (j < len(group) % count)
            out.append([cells[i] for i in group[start : start + n]])
            start += n
    return out


@dataclass
class CellResult:
    """A finished cell: its metrics, or where it diverged; and its per-epoch history.

    ``duration_s`` is the cell's share of its population's wall time (the wall time divided by
    ``population_size``, the number of cells trained with it).
    """

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
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    population_size: int = 1
    teacher_seed: int = 0

    @property
    def key(self) -> str:
        """The same key as the :class:`Cell` it finished."""
        return _key(self.variant, self.teacher_seed, self.seed)

    def value(self, metric: str) -> float:
        """The metric's value, NaN for a diverged cell or a missing metric."""
        v = self.metrics.get(metric)
        return math.nan if v is None else float(v)

    def to_json(self) -> dict[str, Any]:
        """The cell file's content (NaN metrics as null)."""
        out = dataclasses.asdict(self)
        out["metrics"] = {k: finite_or_none(v) for k, v in self.metrics.items()}
        out["history"] = [{k: finite_or_none(v) for k, v in row.items()} for row in self.history]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CellResult:
        """Read back :meth:`to_json` (unknown keys ignored, null metrics as NaN)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in obj.items() if k in names}
        kw["metrics"] = _floats(obj.get("metrics", {}))
        kw["history"] = [_floats(row) for row in obj.get("history", [])]
        return cls(**kw)


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    """JSON numbers as floats, null as NaN."""
    return {k: (math.nan if v is None else float(v)) for k, v in values.items()}


def run_cells(configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Train cells from their config dicts as one population; the body every executor runs.

    Module-level and dicts-in/dicts-out so that spawned processes and Ray tasks can call it.
    Each outcome is that cell's own ``train(cfg)`` run, whatever its neighbours. Divergence is a
    result (it is what some variants do), not a failure: the cell is ``diverged`` and keeps its
    history up to then.

    Raises:
        Exception: anything else that stops the population (the caller reports which cells).
    """
    from dgkd.loop import DivergedError
    from dgkd.train import population_groups, train_population

    cfgs = [TrainConfig(**config) for config in configs]
    size = {i: len(group) for group in population_groups(cfgs) for i in group}
    outcomes = []
    for i, result in enumerate(train_population(cfgs)):
        exc = result.error
        if exc is not None and not isinstance(exc, DivergedError):
            raise exc
        out: dict[str, Any] = {
            "status": "ok" if exc is None else "diverged",
            "metrics": {},
            "duration_s": result.duration_s / size[i],
            "diverged": None,
            "history": [dict(row) for row in result.history],
            "population_size": size[i],
        }
        if exc is None:
            out["metrics"] = {k: float(v) for k, v in result.metrics.items()}
            out["metrics"].update(curve_metrics(result.history))
        else:
            out["diverged"] = {
                "epoch": exc.epoch,
                "step": exc.step,
                "value": str(exc.value),
                "message": str(exc),
            }
        outcomes.append(out)
    return outcomes

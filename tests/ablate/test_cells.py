"""Cells: every variant runs on the same seeds, split and teacher, planned seed-major, in
populations; each keeps its per-epoch curves and their summary."""

from __future__ import annotations

import json
import math

import pytest

from dgkd.ablate import VARIANTS
from dgkd.ablate.cells import Cell, CellResult, plan_cells, plan_populations
from dgkd.ablate.curves import curve_metrics, nc1_auc
from dgkd.config import TrainConfig
from dgkd.teacher import teacher_key

from .helpers import EXPECTED, TINY, diff


def test_all_variants_share_seeds_split_and_teacher():
    base = TrainConfig(**TINY, teacher_seed=3, split_seed=2)
    cells = plan_cells(base, tuple(VARIANTS), range(4))
    assert len(cells) == len(VARIANTS) * 4
    seeds = {v: sorted(c.seed for c in cells if c.variant == v) for v in VARIANTS}
    assert all(s == [0, 1, 2, 3] for s in seeds.values())
    assert all(c.config.seed == c.seed for c in cells)
    assert {c.teacher_key for c in cells} == {teacher_key(base)}
    assert {(c.config.split_seed, c.config.teacher_seed) for c in cells} == {(2, 3)}
    # seed-major: an interrupted run leaves whole pairs behind
    assert [c.variant for c in cells[: len(VARIANTS)]] == list(VARIANTS)
    # within one seed, a cell differs from full only by its variant's changes
    full = {c.seed: c.config for c in cells if c.variant == "full"}
    for c in cells:
        assert diff(full[c.seed], c.config) == EXPECTED[c.variant]


def test_populations_are_seed_major_runs_that_keep_every_worker_busy(monkeypatch):
    monkeypatch.setenv("DGKD_MAX_POPULATION", "0")  # the plan's own sizes, on any machine
    cells = plan_cells(TrainConfig(**TINY), tuple(VARIANTS), range(10))  # 80 cells

    def sizes(pops: list[list[Cell]]) -> list[int]:
        return [len(p) for p in pops]

    one = plan_populations(cells, workers=1, size=16)
    assert sizes(one) == [16] * 5 and [c for p in one for c in p] == cells  # two seeds each
    two = plan_populations(cells, workers=2, size=16)
    assert sizes(two) == [14, 14, 13, 13, 13, 13] and [c for p in two for c in p] == cells
    assert sizes(plan_populations(cells[:6], workers=4, size=16)) == [2, 2, 1, 1]
    assert sizes(plan_populations(cells[:3], workers=1, size=1)) == [1, 1, 1]
    assert plan_populations([], workers=2, size=16) == []
    # cells that cannot share a population (another student width) train apart
    other = [Cell(c.variant, c.seed, c.config.replace(student_width=4)) for c in cells[:3]]
    mixed = [*cells[:2], *other, cells[2]]
    assert plan_populations(mixed, workers=1, size=16) == [cells[:3], other]
    monkeypatch.setenv("DGKD_MAX_POPULATION", "8")  # a smaller population cap cuts further
    assert sizes(plan_populations(cells, workers=1, size=16)) == [8] * 10


def test_nc1_auc_is_the_mean_log_nc1_over_epochs():
    history = [{"epoch": 1.0, "train_nc1": 8.0}, {"epoch": 2.0, "train_nc1": 2.0}]
    assert nc1_auc(history) == pytest.approx(math.log(4.0))
    assert curve_metrics(history) == {"nc1_auc": nc1_auc(history)}
    # a faster collapse to the same final value has the lower area
    assert nc1_auc([{"train_nc1": 8.0}, {"train_nc1": 1.0}, {"train_nc1": 1.0}]) < nc1_auc(
        [{"train_nc1": 8.0}, {"train_nc1": 8.0}, {"train_nc1": 1.0}]
    )
    for bad in ([], [{"train_nc1": math.nan}], [{"train_nc1": 0.0}], [{"epoch": 1.0}]):
        assert math.isnan(nc1_auc(bad))


def test_cell_files_keep_the_history_with_nan_as_null():
    res = CellResult(
        "full",
        0,
        "ok",
        "h",
        "t",
        metrics={"test_acc": 0.5, "val_acc": math.nan},
        history=[{"epoch": 1.0, "train_nc1": 3.0, "val_ece": math.nan}],
        population_size=16,
    )
    obj = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert obj["history"] == [{"epoch": 1.0, "train_nc1": 3.0, "val_ece": None}]
    back = CellResult.from_json(obj)
    assert back.population_size == 16 and back.history[0]["train_nc1"] == 3.0
    assert math.isnan(back.history[0]["val_ece"]) and math.isnan(back.value("val_acc"))
    old = {k: v for k, v in obj.items() if k not in ("history", "population_size")}
    assert CellResult.from_json(old).history == []  # a cell file written before curves

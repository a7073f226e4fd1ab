"""Cells: every variant runs on the same seeds, split and teacher, planned seed-major."""

from __future__ import annotations

from dgkd.ablate import VARIANTS
from dgkd.ablate.cells import plan_cells
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

"""Executors: a process pool and Ray tasks give the metrics of the in-process run, whatever the
populations the cells land in."""

from __future__ import annotations

import pytest

from dgkd.ablate import resolve_base, run_ablation

from .helpers import TINY, opts, same_cells


def test_worker_processes_give_the_same_metrics(tmp_path):
    base = resolve_base(overrides=TINY)
    seq = run_ablation(base, opts(tmp_path, variants=("kd",), name="seq"))
    par = run_ablation(base, opts(tmp_path, variants=("kd",), name="par", workers=2))
    assert par.ran == 4  # one population of 4 against two of 2, one per process
    assert {c.population_size for c in seq.cells} == {4}
    assert {c.population_size for c in par.cells} == {2}
    same_cells(seq.cells, par.cells)
    for a, b in zip(seq.cells, par.cells, strict=True):
        assert a.history == b.history


@pytest.mark.slow
def test_ray_tasks_give_the_same_metrics(tmp_path):
    pytest.importorskip("ray")
    base = resolve_base(overrides=TINY)
    seq = run_ablation(base, opts(tmp_path, variants=("kd",), n_seeds=1, name="seq"))
    # "local" starts a private cluster instead of joining one that happens to run here
    ray_opts = opts(
        tmp_path, variants=("kd",), n_seeds=1, name="ray", backend="ray", address="local", workers=2
    )
    par = run_ablation(base, ray_opts)  # two populations of one cell, as two tasks
    assert par.ran == 2
    same_cells(seq.cells, par.cells)

"""Executors: a process pool and Ray tasks give the metrics of the in-process run."""

from __future__ import annotations

import pytest

from dgkd.ablate import resolve_base, run_ablation

from .helpers import TINY, opts, same_cells


def test_worker_processes_give_the_same_metrics(tmp_path):
    base = resolve_base(overrides=TINY)
    seq = run_ablation(base, opts(tmp_path, variants=("kd",), name="seq"))
    par = run_ablation(base, opts(tmp_path, variants=("kd",), name="par", workers=2))
    assert par.ran == 4
    same_cells(seq.cells, par.cells)


@pytest.mark.slow
def test_ray_tasks_give_the_same_metrics(tmp_path):
    pytest.importorskip("ray")
    base = resolve_base(overrides=TINY)
    seq = run_ablation(base, opts(tmp_path, variants=("kd",), seeds=1, name="seq"))
    # "local" starts a private cluster instead of joining one that happens to run here
    ray_opts = opts(tmp_path, variants=("kd",), seeds=1, name="ray", backend="ray", address="local")
    par = run_ablation(base, ray_opts)
    assert par.ran == 2
    same_cells(seq.cells, par.cells)

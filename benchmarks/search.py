"""Whole searches of the packaged ``eps_sweep`` study, each in a fresh process.

The comparison runs ``python -m benchmarks.search`` once per case: that child loads the study
with :func:`dgkd.study.load_study`, changes only its pruner, trial count and (in quick mode) the
epochs, and runs it through :func:`dgkd.search.run_search` as ``dgkd-search --quiet`` does, so
each wall time includes a search process's start-up. The median pruner is timed against none
(one worker) and two workers against one, over the study's trials, with no confirm stage; the
whole main job on each backend is :mod:`benchmarks.mainjob`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.report import QUICK_POOLS, Comparison, Row, require_cpu, run_module

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STUDY", "main", "run"]

STUDY = "eps_sweep"  # the packaged study every case runs
_QUICK_BASE = {"epochs": 2, "teacher_epochs": 2, **QUICK_POOLS}  # the study's base, quick mode


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry: one search of the study under ``--name`` in ``--out``, no live display.

    Returns 1 when no trial completed (as ``dgkd-search`` exits non-zero then), else 0.
    """
    from dgkd.search import make_options, print_summary, run_search
    from dgkd.study import load_study

    p = argparse.ArgumentParser(prog="python -m benchmarks.search")
    p.add_argument("--out", required=True, help="results root; the search writes <out>/<name>")
    p.add_argument("--name", required=True, help="the study's name for this run")
    p.add_argument("--pruner", required=True, help="the study's pruner for this run")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--backend", default="optuna")
    p.add_argument("--quick", action="store_true", help=f"base config {_QUICK_BASE}")
    args = p.parse_args(argv)
    study = load_study(STUDY)
    base = {**study.base, **(_QUICK_BASE if args.quick else {})}
    study = study.replace(name=args.name, pruner=args.pruner, trials=args.trials, base=base)
    # The trials alone (each the study's seeds as one population): the confirm stage after them
    # is a fixed cost that would blur the per-trial comparison.
    opts = make_options(
        study,
        out=args.out,
        workers=args.workers,
        backend=args.backend,
        quiet=True,
        confirm_top=0,
    )
    records = run_search(study, opts)
    print_summary(study, records, opts)
    return 0 if any(r.state == "COMPLETE" for r in records) else 1


def _search(
    tmp: Path, name: str, *, pruner: str, trials: int, args: list[str], quick: bool
) -> tuple[float, pd.DataFrame]:
    """Run one search in a fresh process; return (wall seconds, its trials.csv as a frame)."""
    import pandas as pd

    flags = ["--out", str(tmp), "--name", name, "--pruner", pruner, "--trials", str(trials)]
    start = time.perf_counter()
    run_module("benchmarks.search", *flags, *args, *(["--quick"] if quick else []))
    wall = time.perf_counter() - start
    return wall, pd.read_csv(tmp / name / "trials.csv")


def run(device: torch.device, *, quick: bool, trials: int, parallel_trials: int) -> Comparison:
    """Whole searches in fresh processes: the study's median pruner against none (``trials``
    each, one worker), 2 workers against 1 (``parallel_trials`` each), and the share of worker
    time spent outside ``train()``.

    Raises:
        ValueError: ``device`` is not the CPU.
    """
    from dgkd.config import TrainConfig
    from dgkd.train import train

    require_cpu(device, "search")
    comp = Comparison(
        f"Search: {STUDY} (dgkd-search in a fresh process); pruning over {trials} trials, "
        f"workers over {parallel_trials}"
    )
    train(TrainConfig(**_QUICK_BASE) if quick else TrainConfig())  # teacher cached
    # label: (pruner, trials, arguments); with trials == parallel_trials, the two unpruned
    # one-worker runs share a label and run once.
    runs = {
        f"{trials} trials, 1 worker, no pruning": ("none", trials, ["--workers", "1"]),
        f"{trials} trials, 1 worker, median pruner": ("median", trials, ["--workers", "1"]),
        f"{parallel_trials} trials, 1 worker, no pruning": ("none", parallel_trials, []),
        f"{parallel_trials} trials, 2 workers, no pruning": (
            "none", parallel_trials, ["--workers", "2"]),
    }  # fmt: skip
    walls: dict[str, float] = {}
    frames: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, (label, (pruner, n, args)) in enumerate(runs.items()):
            walls[label], frames[label] = _search(
                tmp, f"run{i}", pruner=pruner, trials=n, args=args, quick=quick
            )
            comp.rows.append(Row(label, [walls[label]]))
    unpruned = walls[f"{trials} trials, 1 worker, no pruning"]
    pruned = walls[f"{trials} trials, 1 worker, median pruner"]
    one = walls[f"{parallel_trials} trials, 1 worker, no pruning"]
    two = walls[f"{parallel_trials} trials, 2 workers, no pruning"]
    comp.ratio("trials per minute, 2 workers / 1 worker", one / two, ">= 1.7x")
    comp.ratio(
        f"wall time over {trials} trials, no pruning / median pruner", unpruned / pruned, "report"
    )
    for label, frame in frames.items():
        states = frame["state"].value_counts().to_dict()
        best = frame.loc[frame["state"] == "COMPLETE", "value"].max()
        in_trials = frame["duration_s"].fillna(0).sum()
        slots = 2 if "2 workers" in label else 1
        outside = 1 - in_trials / (walls[label] * slots)
        comp.notes.append(
            f"{label}: best val_acc {best:.4f}; states {states}; "
            f"{100 * outside:.1f}% of worker time outside train() (start-up, storage, "
            "sampling, exports)"
        )
    return comp


if __name__ == "__main__":
    sys.exit(main())

"""An ablation: ``dgkd-ablate --variants all --seeds 10 --teachers 1`` against its cells run one
by one.

The comparison runs ``python -m benchmarks.ablate`` twice, each a fresh process on one core: once
as ``dgkd-ablate --variants all --seeds 10 --teachers 1 --quiet`` on the default setup (its
cells trained in populations, its tables and plot written), once training the same cells one by
one with ``dgkd.train.train``, as the ablation did before populations. Both find the teacher already
cached; each wall time includes a process's start-up. The ratio is their wall times, measured
back to back, and the cells' test accuracies are compared too: they must be identical.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.report import QUICK_POOLS, Comparison, Row, require_cpu, run_module

__all__ = ["TITLE", "main", "run"]

TITLE = "Ablation: dgkd-ablate --variants all (populations) vs train() per cell"
SEEDS = 10  # the dgkd-ablate default
_QUICK_SEEDS = 1  # quick mode: the 8 variants on one seed, 2 epochs each, tiny pools
_QUICK_SET = ("epochs=2", "teacher_epochs=2", *(f"{k}={v}" for k, v in QUICK_POOLS.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry: one ablation (``--mode ablate``) or its cells one by one (``--mode cells``),
    on one thread; ``cells`` writes ``cells.json`` (each cell's test accuracy) into ``--out``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablate")
    p.add_argument("--mode", choices=("ablate", "cells"), required=True)
    p.add_argument("--out", required=True, help="results root")
    p.add_argument("--seeds", type=int, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from dgkd.runtime import set_threads

    set_threads(1)
    if args.mode == "ablate":
        from dgkd.cli import ablate_main

        sets = [flag for kv in args.overrides for flag in ("--set", kv)]
        flags = ["--variants", "all", "--seeds", str(args.seeds), "--quiet", *sets]
        flags += ["--workers", "1"]  # one process on one core, as the cells one by one
        flags += ["--teachers", "1"]  # one teacher: the cells below are the base's
        return ablate_main([*flags, "--out", args.out])
    _cells(Path(args.out), args.seeds, args.overrides)
    return 0


def _cells(out: Path, n_seeds: int, overrides: list[str]) -> None:
    """Every cell of the ablation, ``train()`` after ``train()`` (a divergence is a result)."""
    from dgkd.ablate import VARIANTS, resolve_base
    from dgkd.ablate.cells import plan_cells
    from dgkd.config import parse_overrides
    from dgkd.loop import DivergedError
    from dgkd.train import train

    base = resolve_base(overrides=parse_overrides(overrides))
    accs: dict[str, float | None] = {}
    for cell in plan_cells(base.config, tuple(VARIANTS), range(n_seeds)):
        try:
            accs[cell.key] = train(cell.config).metrics["test_acc"]
        except DivergedError:
            accs[cell.key] = None
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells.json").write_text(json.dumps(accs))


def run(device: torch.device, *, quick: bool) -> Comparison:
    """The whole default ablation through ``dgkd-ablate`` against its cells one by one.

    Raises:
        ValueError: ``device`` is not the CPU (the comparison is about one CPU core).
    """
    from dgkd.config import TrainConfig, parse_overrides
    from dgkd.train import train

    require_cpu(device, "ablate")
    n_seeds = _QUICK_SEEDS if quick else SEEDS
    overrides = list(_QUICK_SET) if quick else []
    base = TrainConfig().replace(**parse_overrides(overrides))
    train(base.replace(epochs=1))  # the teacher and the data cached, as for both children
    comp = Comparison(TITLE)
    sets = [flag for kv in overrides for flag in ("--set", kv)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        walls = {}
        for mode in ("cells", "ablate"):
            flags = ["--mode", mode, "--out", str(tmp / mode), "--seeds", str(n_seeds), *sets]
            start = time.perf_counter()
            run_module("benchmarks.ablate", *flags)
            walls[mode] = time.perf_counter() - start
        cells = json.loads((tmp / "cells" / "cells.json").read_text())
        done = tmp / "ablate" / "ablate" / "default"
        with (done / "runs.csv").open() as f:
            runs = {
                f"{r['variant']}-teacher{r['teacher_seed']}-seed{r['seed']}": r
                for r in csv.DictReader(f)
            }
        files = (done / "cells").glob("*.json")
        sizes = sorted({json.loads(p.read_text())["population_size"] for p in files})
    n = len(cells)
    same = sum(
        (runs[k]["test_acc"] == "" if v is None else float(runs[k]["test_acc"]) == v)
        for k, v in cells.items()
    )
    label = f"{n} cells ({n // n_seeds} variants x {n_seeds} seed{'s' if n_seeds > 1 else ''})"
    one = Row(f"{label}, train() per cell", [walls["cells"]])
    populations = "/".join(map(str, sizes))
    pops = Row(
        f"{label}, dgkd-ablate (populations of {populations}, tables, plot)", [walls["ablate"]]
    )
    comp.rows += [one, pops]
    comp.ratio(
        "cells per hour, dgkd-ablate / train() per cell", one.median / pops.median, ">= 1.5x"
    )
    comp.notes += [
        f"one core each, fresh processes, teacher cached; "
        f"{'quick: 2 epochs' if quick else f'default setup ({base.epochs} epochs)'}",
        f"cells per hour: {n * 3600 / walls['cells']:.0f} one by one, "
        f"{n * 3600 / walls['ablate']:.0f} with dgkd-ablate",
        f"identical test accuracy in {same} of {n} cells",
    ]
    return comp


if __name__ == "__main__":
    sys.exit(main())

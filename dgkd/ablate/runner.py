"""Run (or finish) an ablation: lock its directory, run the pending cells, write the outputs.

An ablation resolves one base configuration, derives each variant from it, and runs every
(variant, teacher seed, seed) cell on the same seeds, split and teachers. The pending cells train in
populations (:func:`~dgkd.ablate.cells.plan_populations`), and each cell is stored as soon as its
population finishes, so an interrupted ablation resumes where it stopped, losing at most the
populations in flight; tables are written only when every cell is done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dgkd.ablate.base import BaseConfig
from dgkd.ablate.cells import Cell, CellResult, plan_populations
from dgkd.ablate.claims import check_claims
from dgkd.ablate.executors import execute
from dgkd.ablate.export import write_ablation_outputs
from dgkd.ablate.options import AblationOptions
from dgkd.ablate.plan import preflight
from dgkd.ablate.result import AblationResult
from dgkd.ablate.store import directory_lock, load_finished, manifest, save_cell, write_manifest
from dgkd.ablate.summary import summarize_cells
from dgkd.config import TrainConfig
from dgkd.io import move_aside
from dgkd.progress import Bar

__all__ = ["run_ablation"]


def run_ablation(base: BaseConfig, opts: AblationOptions) -> AblationResult:
    """Run (or finish) an ablation and write its tables and plot.

    Raises:
        AblateError: bad options, a name in use by another running ablation, or a base config
            different from the one the directory's finished cells used.
        CellFailedError: a cell failed (not diverged); the finished cells stay for a rerun.
    """
    plan = preflight(base, opts)
    name, directory, variants, seeds = plan.name, plan.directory, plan.variants, plan.seeds
    with directory_lock(directory):
        moved = move_aside(directory) if opts.fresh else None
        cells = plan.cells
        done = load_finished(directory, base, cells, name)  # again, now under the lock
        teacher_keys = {c.teacher_seed: c.teacher_key for c in cells}
        info = manifest(
            base, opts, name=name, variants=variants, seeds=seeds, teacher_keys=teacher_keys
        )
        write_manifest(directory, info)
        pending = [c for c in cells if c.key not in done]
        ran = _run_pending(base, pending, done, directory, opts, total=len(cells))
        results = [done[c.key] for c in cells]
        summary = summarize_cells(results, variants)
        result = AblationResult(
            name,
            directory,
            base,
            variants,
            seeds,
            plan.teacher_seeds,
            results,
            summary,
            check_claims(summary),
            ran=ran,
            reused=len(cells) - ran,
            moved_to=moved,
        )
        write_ablation_outputs(result, info)
        return result


def _prepare_teachers(cfgs: Sequence[TrainConfig], progress: bool) -> None:
    """Train or load each teacher once, before cells start, so no cell waits for another's."""
    from dgkd.loop import resolve_device
    from dgkd.teacher import load_teacher
    from dgkd.train import splits_for

    for cfg in cfgs:
        load_teacher(cfg, splits_for(cfg), device=resolve_device(cfg.device), progress=progress)


def _run_pending(
    base: BaseConfig,
    pending: Sequence[Cell],
    done: dict[str, CellResult],
    directory: Path,
    opts: AblationOptions,
    *,
    total: int,
) -> int:
    """Run ``pending`` cells in populations with the chosen executor, storing each cell as its
    population finishes."""
    if not pending:
        return 0
    teachers = {c.teacher_seed: c.config for c in pending}
    _prepare_teachers(list(teachers.values()), opts.progress)
    populations = plan_populations(pending, workers=opts.workers or 1, size=opts.population)
    by_key = {c.key: c for c in pending}
    ran = 0
    with Bar(opts.progress, "ablation", total, completed=len(done)) as bar:

        def finished(key: str, out: Mapping[str, Any]) -> None:
            nonlocal ran
            cell = by_key[key]
            res = CellResult(
                variant=cell.variant,
                seed=cell.seed,
                status=out["status"],
                config_hash=cell.hash,
                teacher_key=cell.teacher_key,
                metrics=dict(out["metrics"]),
                duration_s=float(out["duration_s"]),
                diverged=out.get("diverged"),
                config=cell.config.to_dict(),
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                history=[dict(row) for row in out.get("history", [])],
                population_size=int(out.get("population_size", 1)),
                teacher_seed=cell.teacher_seed,
            )
            save_cell(directory, res)
            done[key] = res
            ran += 1
            line = _cell_line(res)
            bar.advance(line)
            if opts.log is not None:
                opts.log(f"[{len(done)}/{total}] {line}")

        execute(
            populations, finished, backend=opts.backend, workers=opts.workers, address=opts.address
        )
    return ran


def _cell_line(res: CellResult) -> str:
    """One progress line for a finished cell."""
    who = f"{res.variant} teacher {res.teacher_seed} seed {res.seed}"
    if res.status == "diverged":
        where = res.diverged or {}
        return f"{who}: diverged at epoch {where.get('epoch')}"
    return f"{who}: test_acc {res.value('test_acc'):.4f} ({res.duration_s:.1f} s)"

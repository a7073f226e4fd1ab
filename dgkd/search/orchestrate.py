"""``dgkd-search`` orchestration: options, the backend, and the result files.

:func:`make_options` validates every option once; :func:`run_search` checks everything that can
be checked before any work starts (so bad input writes nothing), moves old results aside on
``--fresh``, hands the study to its backend (:mod:`dgkd.search.registry`), and writes the final
outputs. :func:`best_params` reads a finished (or running) search back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.io import move_aside
from dgkd.search.common import Log, base_config, print_line
from dgkd.search.confirm import VERDICT_FILE
from dgkd.search.export import BEST_FILE, best_record, write_search_outputs
from dgkd.search.records import (
    SearchInputError,
    SearchOptions,
    TrialRecord,
    completed,
    counts_toward_total,
    option_default,
)
from dgkd.search.registry import backend_names, get_backend
from dgkd.search.reporter import state_counts
from dgkd.search.trialfiles import STUDENTS_DIR

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["best_params", "make_options", "print_summary", "run_search"]

_CLUSTER_FLAGS = ("--address", "--cpus-per-trial", "--gpus-per-trial")


def make_options(
    study: Study,
    *,
    trials: int | None = None,
    out: str | Path = "runs",
    workers: int | None = None,
    backend: str | None = None,
    storage: str | None = None,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    fresh: bool = False,
    quiet: bool = False,
    overrides: dict[str, Any] | None = None,
    mlflow: str | None = None,
    n_seeds: int | None = None,
    batch: int | None = None,
    confirm_top: int | None = None,
    n_confirm_seeds: int | None = None,
    confirm_teachers: int | None = None,
) -> SearchOptions:
    """Validated :class:`SearchOptions` for ``study`` (``out_dir`` = ``<out>/<study name>``).

    The one place the command's options are checked, and where the base config the overrides
    make is resolved (``base``), once for the whole search; None takes the default of
    :class:`SearchOptions` (``trials``, ``n_seeds`` and the confirm stage's: the study's).

    Raises:
        SearchInputError: a bad count, backend or flag combination.
        ConfigError: an override is unknown, invalid, or names a space parameter.
    """
    backend = option_default("backend") if backend is None else backend
    runner = get_backend(backend)  # an unknown name is refused here
    total = study.trials if trials is None else trials
    if total < 1:
        raise SearchInputError(f"--trials must be at least 1, got {total}")
    workers = option_default("workers") if workers is None else workers
    if workers < 1:
        raise SearchInputError(f"--workers must be at least 1, got {workers}")
    if not runner.uses_cluster:
        for flag, value in zip(
            _CLUSTER_FLAGS, (address, cpus_per_trial, gpus_per_trial), strict=True
        ):
            if value is not None:
                raise SearchInputError(f"{flag} applies to --backend {_cluster_backends()} only")
    if cpus_per_trial is not None and not cpus_per_trial > 0:
        raise SearchInputError(f"--cpus-per-trial must be > 0, got {cpus_per_trial}")
    if gpus_per_trial is not None and not gpus_per_trial >= 0:
        raise SearchInputError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    n_seeds = study.n_seeds if n_seeds is None else n_seeds
    if batch is not None and batch > 1 and not runner.batches:
        raise SearchInputError(
            f"--batch applies to --backend optuna only; --backend {backend} runs each trial's "
            "seeds as one population and trials side by side (--cpus-per-trial)"
        )
    batch = (study.batch if runner.batches else 1) if batch is None else batch
    confirm_top = study.confirm_top if confirm_top is None else confirm_top
    n_confirm_seeds = study.n_confirm_seeds if n_confirm_seeds is None else n_confirm_seeds
    confirm_teachers = study.confirm_teachers if confirm_teachers is None else confirm_teachers
    for flag, value, low in (
        ("--seeds", n_seeds, 1),
        ("--batch", batch, 1),
        ("--confirm-top", confirm_top, 0),
        ("--confirm-seeds", n_confirm_seeds, 2 if confirm_top else 0),
        ("--confirm-teachers", confirm_teachers, 1),
    ):
        if value < low:
            raise SearchInputError(f"{flag} must be at least {low}, got {value}")
    overrides = dict(overrides or {})
    base = study.check_overrides(overrides)
    if confirm_top and confirm_teachers > 1 and base.teacher_checkpoint:
        raise SearchInputError(
            "teacher_checkpoint names one teacher, so the confirm stage cannot run under "
            f"{confirm_teachers}; pass --confirm-teachers 1 (or drop teacher_checkpoint)"
        )
    if mlflow is not None:
        _check_mlflow(mlflow)
    return SearchOptions(
        trials=total,
        out_dir=Path(out).expanduser() / study.name,
        workers=workers,
        backend=backend,
        storage=storage,
        address=address,
        cpus_per_trial=float(
            option_default("cpus_per_trial") if cpus_per_trial is None else cpus_per_trial
        ),
        gpus_per_trial=float(
            option_default("gpus_per_trial") if gpus_per_trial is None else gpus_per_trial
        ),
        fresh=fresh,
        quiet=quiet,
        overrides=overrides,
        mlflow=mlflow,
        n_seeds=n_seeds,
        batch=batch,
        confirm_top=confirm_top,
        n_confirm_seeds=n_confirm_seeds,
        confirm_teachers=confirm_teachers,
        base=base,
    )


def _check_mlflow(uri: str) -> None:
    """Refuse ``--mlflow`` without MLflow installed, or with a URI it cannot use."""
    from dgkd.tracking import mlflow_problem

    problem = mlflow_problem(uri)
    if problem is not None:
        raise SearchInputError(problem)


def _cluster_backends() -> str:
    """``ray``: the backends that take the cluster flags."""
    return " or ".join(n for n in backend_names() if get_backend(n).uses_cluster)


def run_search(study: Study, opts: SearchOptions, *, log: Log | None = None) -> list[TrialRecord]:
    """Run (or continue) ``study`` to ``opts.trials`` finished trials and write its outputs.

    Args:
        study: The validated study.
        opts: From :func:`make_options`.
        log: Where one-line notices go (default: print to stdout).

    Returns:
        Every trial of the study, any state, by number.

    Raises:
        SearchInputError: unreachable storage or cluster, or a storage holding a different study.
    """
    log = log or print_line
    # Before any trial: a Ctrl-C or SIGTERM that lands inside pandas' first import leaves its
    # options half-registered, and the outputs written on that interruption need pandas.
    import pandas  # noqa: F401

    if opts.base is None:  # options built without make_options: resolve the base once here
        opts = dataclasses.replace(opts, base=base_config(study, opts))
    backend = get_backend(opts.backend)
    backend.preflight(study, opts)  # before anything is moved or written
    if opts.fresh:
        moved = move_aside(opts.out_dir)
        if moved is not None:
            log(f"moved previous results of {study.name} to {moved}")
    if opts.mlflow is not None:  # once, before the workers: they would race to create it
        from dgkd.tracking import ensure_experiment

        ensure_experiment(opts.mlflow, study.name)
    records = backend.run(study, opts, log=log)
    verdict = _confirm(study, opts, records, log)
    write_search_outputs(study, records, opts.out_dir, overrides=opts.overrides, verdict=verdict)
    with contextlib.suppress(OSError):  # only when empty: no student awaits judgement
        (Path(opts.out_dir) / STUDENTS_DIR).rmdir()
    return records


def _confirm(
    study: Study, opts: SearchOptions, records: Sequence[TrialRecord], log: Log
) -> dict[str, Any] | None:
    """The confirm stage (:mod:`dgkd.search.confirm`) when asked for; its verdict as JSON."""
    from dgkd.search.common import trial_seeds
    from dgkd.search.confirm import plan_confirm, run_confirm

    plan = plan_confirm(
        study,
        records,
        top=opts.confirm_top or 0,
        n_seeds=opts.n_confirm_seeds or 0,
        search_seeds=trial_seeds(study, opts),
        teachers=opts.confirm_teachers,
    )
    if plan is None:
        return None
    under = f" under {plan.teachers} teachers" if plan.teachers > 1 else ""
    log(
        f"confirm: {len(plan.configs)} config(s) on {len(plan.seeds)} fresh seeds "
        f"({plan.seeds[0]}..{plan.seeds[-1]}){under}"
    )
    from dgkd.parallel import PopulationPool

    # The confirm stage's populations (one per teacher) spread over the search's workers.
    local = not get_backend(opts.backend).uses_cluster
    with PopulationPool(opts.workers if local else 1) as pool:
        verdict = run_confirm(
            study, plan, Path(opts.out_dir), overrides=opts.overrides, trainer=pool, log=log
        )
    return verdict.to_dict()


def best_params(
    study: Study, *, out_dir: str | Path, storage: str | None = None
) -> dict[str, Any] | None:
    """The best COMPLETE trial's searched parameters, or None when there is none yet.

    Reads the study's Optuna storage (``storage``, else ``<out_dir>/journal.log``), falling back to
    ``<out_dir>/best.json`` (what a Ray search leaves). ``out_dir`` is the study's output directory
    (``runs/<study>``); its parent (``runs``) is accepted too.
    """
    from dgkd.search.optuna.storage import JOURNAL_FILE, load_records

    out = Path(out_dir)
    here = (out / JOURNAL_FILE).exists() or (out / BEST_FILE).exists()
    if not here and (out / study.name).is_dir():
        out = out / study.name
    if storage is not None or (out / JOURNAL_FILE).exists():
        records = load_records(study, out_dir=out, storage=storage)
        if records is not None:
            best = best_record(records, study.direction)
            return dict(best.params) if best is not None else None
    if (out / BEST_FILE).exists():
        try:
            params = json.loads((out / BEST_FILE).read_text()).get("params")
        except (OSError, ValueError, AttributeError):
            return None
        return dict(params) if params else None
    return None


def print_summary(
    study: Study, records: Sequence[TrialRecord], opts: SearchOptions, *, top: int = 10
) -> None:
    """A rich table of the best trials, the counts and where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or file: the whole table, not one cut at 80 columns
        console.width = 10_000
    params = [p.name for p in study.space.searched()]
    sign = -1.0 if study.direction == "maximize" else 1.0
    done = sorted(completed(records), key=lambda r: (sign * (r.value or 0.0), r.number))
    counted = sum(counts_toward_total(r) for r in records)
    title = f"{study.name}: {counted}/{opts.trials} trials  ({state_counts(records)})"
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column(study.metric, justify="right")
    for name in params:
        table.add_column(name, justify="right")
    extra = [m for m in ("test_acc", "test_agreement", "test_ece") if m != study.metric]
    for name in extra:
        table.add_column(name, justify="right")
    table.add_column("s", justify="right")
    for r in done[:top]:
        cells = [str(r.number), f"{r.value:.4f}"]
        for name in params:
            v = r.params.get(name)
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        for name in extra:
            m = r.metrics.get(name)
            cells.append("" if m is None or m != m else f"{m:.4f}")
        cells.append("" if r.duration_s is None else f"{r.duration_s:.1f}")
        table.add_row(*cells)
    console.print(table)
    if not done:
        console.print("no trial has completed yet")
    console.print(f"outputs: {opts.out_dir}/ (trials.csv, best.json, students/, history/, *.png)")
    command = get_backend(opts.backend).inspect_command(study, opts)
    if command:
        console.print(f"inspect: {command}", soft_wrap=True)
    verdict = _stored_verdict(Path(opts.out_dir))
    if verdict:  # the terminal ends with the answer
        console.print(f"verdict: {verdict}", soft_wrap=True)
        console.print(f"details: {Path(opts.out_dir) / VERDICT_FILE}", soft_wrap=True)


def _stored_verdict(out: Path) -> str | None:
    """The headline of ``best.json``'s verdict block, if the confirm stage ran."""
    try:
        block = json.loads((out / BEST_FILE).read_text()).get("verdict")
    except (OSError, ValueError, AttributeError):
        return None
    return block.get("headline") if isinstance(block, dict) else None

"""Paired ablations of DGKD: variants x seeds, resumable, with the statistics a reviewer asks for.

An ablation resolves one *base* configuration (the defaults, a study's base, or a study's best
trial; ``--set`` on top), derives each variant from it by changing exactly the fields the variant
names, and runs every (variant, seed) *cell* on the same seeds, the same validation split and
the same teacher (``teacher_seed`` and the split live in the base and no variant touches them).
So the only difference between two cells with the same seed is the variant: a paired comparison.

Each finished cell is written as one JSON file (atomically) under ``cells/`` carrying the hash
of its full configuration; rerunning skips the cells already there, and a changed base is
refused instead of being mixed with old cells.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dgkd.config import TrainConfig
from dgkd.io import atomic_write_json
from dgkd.loop import DivergedError
from dgkd.progress import Bar
from dgkd.stats import CONFIDENCE, N_RESAMPLES, compare_paired, holm, summarize
from dgkd.train import train

__all__ = [
    "ALPHA",
    "METRICS",
    "REFERENCE",
    "VARIANTS",
    "AblateError",
    "AblationOptions",
    "AblationResult",
    "BaseConfig",
    "BaseConfigChangedError",
    "Cell",
    "CellFailedError",
    "CellResult",
    "Claim",
    "Plan",
    "MetricSpec",
    "Variant",
    "ablation_dir",
    "check_claims",
    "config_hash",
    "parse_variants",
    "plan_cells",
    "preflight",
    "resolve_base",
    "run_ablation",
    "run_cell",
    "summarize_cells",
]

REFERENCE = "full"  # the row every other variant is compared with
ALPHA = 0.05  # level at which a claim's difference counts as shown


class AblateError(ValueError):
    """Bad input to an ablation (unknown variant, no finished trials, ...); exit code 2."""


class BaseConfigChangedError(AblateError):
    """The ablation directory holds cells of a different base configuration."""


class CellFailedError(RuntimeError):
    """A cell raised something other than divergence; finished cells are kept for a rerun."""


@dataclass(frozen=True)
class Variant:
    """One ablation row: a name, one line saying what it tests, and the fields it changes."""

    name: str
    doc: str
    changes: Mapping[str, Any]

    def apply(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this variant's changes (and nothing else) applied."""
        return base.replace(**self.changes) if self.changes else base


# `no_grad_term` keeps method "dgkd" and sets epsilon 0 rather than switching to method "dkd":
# the two are numerically identical (the same loss function with a zero weight), and this way
# the variant changes exactly the one field its name is about.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("full", "DGKD as configured (the reference row)", {}),
        Variant("no_grad_term", "epsilon = 0: no gradient term, i.e. DKD", {"epsilon": 0.0}),
        Variant("minimize_mse", "grad_sign = +1: minimize the gradient MSE", {"grad_sign": 1.0}),
        Variant("raw_mse", "grad_term = raw: unnormalized M (seed text)", {"grad_term": "raw"}),
        Variant("kd", "method = kd: Hinton KD at the same temperature", {"method": "kd"}),
        Variant("ce", "method = ce: the student alone, no teacher", {"method": "ce"}),
        Variant("tckd_only", "beta = 0, epsilon = 0: TCKD alone", {"beta": 0.0, "epsilon": 0.0}),
        Variant("nckd_only", "alpha = 0, epsilon = 0: NCKD alone", {"alpha": 0.0, "epsilon": 0.0}),
    )
}


@dataclass(frozen=True)
class MetricSpec:
    """How a summarized metric reads: its label, direction and display scale."""

    name: str
    label: str
    higher_is_better: bool
    percent: bool  # shown x100 with differences in percentage points


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("test_acc", "test accuracy", True, True),
        MetricSpec("val_acc", "validation accuracy", True, True),
        MetricSpec("test_agreement", "test agreement with the teacher", True, True),
        MetricSpec("test_kl_to_teacher", "test KL to the teacher", False, False),
        MetricSpec("test_ece", "test ECE", False, False),
        MetricSpec("train_nc1", "train NC1", False, False),
    )
}

# The seed's claims for DGKD against DKD, and the metric that measures each.
CLAIMS: tuple[tuple[str, str], ...] = (
    ("accuracy", "test_acc"),
    ("fidelity", "test_agreement"),
    ("fidelity", "test_kl_to_teacher"),
    ("calibration", "test_ece"),
    ("compactness", "train_nc1"),
)


def parse_variants(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Variant names from ``"a,b"`` or ``"all"``: ``full`` first, then in the order given.

    Raises:
        AblateError: an unknown name (the message lists the valid ones).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s.strip()]
    if "all" in names:
        return tuple(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise AblateError(
            f"unknown variant {unknown[0]!r}; valid variants: {', '.join(VARIANTS)} (or all)"
        )
    return tuple(dict.fromkeys([REFERENCE, *names]))


def config_hash(cfg: TrainConfig) -> str:
    """Content hash of every config field (16 hex digits)."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaseConfig:
    """The resolved configuration every variant starts from, and where it came from."""

    config: TrainConfig
    source: str  # "default", "study" or "from-study"
    study: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # best trial's params (from-study)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set changes, applied last
    storage: str | None = None  # where the best trial was read (from-study)

    @property
    def default_name(self) -> str:
        """The ablation's name when none is given: ``default``, the study, or ``<study>-best``."""
        if self.source == "default":
            return "default"
        return f"{self.study}-best" if self.source == "from-study" else str(self.study)

    @property
    def hash(self) -> str:
        return config_hash(self.config)


def resolve_base(
    *,
    study: str | None = None,
    from_study: str | None = None,
    storage: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike = "runs",
) -> BaseConfig:
    """The base config: the defaults, a study's base or its best trial; then ``overrides``.

    ``--set`` overrides are applied last so they win over the study's base and the best
    trial's parameters. The best trial is read from ``storage`` or, by default, the study's
    journal ``<out_dir>/<study>/journal.log``.

    Raises:
        AblateError: both studies given, an unknown study, no finished trial, or a base whose
            method is not dgkd (the reference row of a DGKD ablation).
        ConfigError: an override names no config field or has a bad value.
    """
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise AblateError(
            "--set seed has no effect in an ablation: every variant runs on seeds 0..N-1; "
            "use --seeds N instead"
        )
    if study and from_study:
        raise AblateError("give --study or --from-study, not both")
    if storage and not from_study:
        raise AblateError("--storage is only read with --from-study; drop it or add --from-study")
    name = study or from_study
    if name is None:
        base = BaseConfig(TrainConfig().replace(**overrides), "default", overrides=overrides)
    else:
        spec = _load_study(name)
        if study:
            cfg = spec.config({}).replace(**overrides)
            base = BaseConfig(cfg, "study", spec.name, overrides=overrides)
        else:
            params, where = _best_params(spec, storage=storage, out_dir=Path(out_dir))
            cfg = spec.config(params).replace(**overrides)
            base = BaseConfig(cfg, "from-study", spec.name, params, overrides, where)
    if base.config.method != "dgkd":
        where = "--set method" if "method" in overrides else f"study {base.study}"
        raise AblateError(
            f"the base config has method {base.config.method!r} (from {where}), but the "
            "reference row of an ablation is dgkd; use a dgkd base (the kd and ce variants "
            "cover the other methods)"
        )
    return base


def _load_study(name: str):
    from dgkd.study import SpecError, load_study

    try:
        return load_study(name)
    except (SpecError, OSError) as exc:
        raise AblateError(str(exc).strip().splitlines()[0]) from None


def _best_params(spec, *, storage: str | None, out_dir: Path) -> tuple[dict[str, Any], str]:
    from dgkd.search import best_params

    study_dir = out_dir / spec.name
    where = storage or str(study_dir / "journal.log")
    params = best_params(spec, out_dir=study_dir, storage=storage)
    if params is None:
        raise AblateError(
            f"study {spec.name!r} has no finished trials in {where}; run "
            f"'dgkd-search --study {spec.name}' first, or use --study {spec.name} for its base"
        )
    return dict(params), where


@dataclass(frozen=True)
class Cell:
    """One (variant, seed) run of an ablation."""

    variant: str
    seed: int
    config: TrainConfig

    @property
    def key(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    @property
    def teacher_key(self) -> str:
        from dgkd.teacher import teacher_key

        return self.config.teacher_checkpoint or teacher_key(self.config)


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

    def value(self, metric: str) -> float:
        """The metric's value, NaN for a diverged cell or a missing metric."""
        v = self.metrics.get(metric)
        return math.nan if v is None else float(v)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["metrics"] = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CellResult:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in obj.items() if k in names}
        kw["metrics"] = {
            k: (math.nan if v is None else float(v)) for k, v in obj.get("metrics", {}).items()
        }
        return cls(**kw)


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run_cell(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train one cell from its config dict; the body every executor runs.

    Module-level and dict-in/dict-out so that spawned processes and Ray tasks can call it.
    Divergence is a result (it is what some variants do), not a failure.
    """
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


@dataclass(frozen=True)
class AblationOptions:
    """How to run an ablation (the ``dgkd-ablate`` flags), independent of the base config."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: int = 5  # cells run on seeds 0 .. seeds-1
    workers: int | None = None  # local: processes (default 1); ray: cells in flight (default all)
    backend: str = "local"  # local | ray
    address: str | None = None  # Ray cluster address; None = RAY_ADDRESS or a new local cluster
    out_dir: Path = Path("runs")  # results go to <out_dir>/ablate/<name>/
    name: str | None = None  # None = BaseConfig.default_name
    fresh: bool = False  # move an existing directory of this name aside first
    progress: bool = False  # rich progress bar on stderr
    log: Callable[[str], None] | None = None  # plain progress lines (when not a terminal)
    argv: tuple[str, ...] = ()  # the command line, recorded in config.json


@dataclass
class AblationResult:
    """A finished ablation: every planned cell, its summary and the claims check."""

    name: str
    directory: Path
    base: BaseConfig
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: list[CellResult]
    summary: list[dict[str, Any]]  # one row per variant (see summarize_cells)
    claims: list[Claim]
    ran: int  # cells trained by this invocation
    reused: int  # cells found finished on disk
    moved_to: Path | None = None  # where --fresh moved the old directory


def ablation_dir(out_dir: str | os.PathLike, name: str) -> Path:
    """``<out_dir>/ablate/<name>``."""
    return Path(out_dir) / "ablate" / name


@dataclass(frozen=True)
class Plan:
    """What an ablation will do: its directory, cells, and the cells already finished there."""

    name: str
    directory: Path
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: list[Cell]
    finished: dict[str, CellResult]  # by Cell.key; empty with --fresh

    @property
    def pending(self) -> list[Cell]:
        return [c for c in self.cells if c.key not in self.finished]


def _check_writable(directory: Path) -> None:
    """Refuse, before any work, a results directory that cannot be created or written."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise AblateError(f"cannot write results under {existing}; pass a writable --out")


def preflight(base: BaseConfig, opts: AblationOptions) -> Plan:
    """Check the options and the results directory without changing anything.

    Raises:
        AblateError: bad options, or (without ``fresh``) a directory holding cells of a
            different base config.
    """
    if opts.seeds < 1:
        raise AblateError(
            f"--seeds must be >= 1 (5 or more for a CI worth reading), got {opts.seeds}"
        )
    if opts.workers is not None and opts.workers < 1:
        raise AblateError(f"--workers must be >= 1, got {opts.workers}")
    if opts.backend not in ("local", "ray"):
        raise AblateError(f"--backend must be local or ray, got {opts.backend!r}")
    if opts.address and opts.backend != "ray":
        raise AblateError("--address is for --backend ray; add --backend ray or drop it")
    variants = parse_variants(opts.variants)
    seeds = tuple(range(opts.seeds))
    name = opts.name or base.default_name
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise AblateError(f"--name must be a plain directory name, got {name!r}")
    directory = ablation_dir(opts.out_dir, name)
    _check_writable(directory)
    cells = plan_cells(base.config, variants, seeds)
    finished = {} if opts.fresh else _load_finished(directory, base, cells, name)
    return Plan(name, directory, variants, seeds, cells, finished)


def run_ablation(base: BaseConfig, opts: AblationOptions) -> AblationResult:
    """Run (or finish) an ablation and write its tables and plot.

    Raises:
        AblateError: bad options, a name in use by another running ablation, or a base config
            different from the one the directory's finished cells used.
        CellFailedError: a cell failed (not diverged); the finished cells stay for a rerun.
    """
    from filelock import FileLock, Timeout

    from dgkd import ablate_export

    plan = preflight(base, opts)
    name, directory, variants, seeds = plan.name, plan.directory, plan.variants, plan.seeds
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory.parent / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise AblateError(
            f"another dgkd-ablate is running on {directory}; wait for it or use another --name"
        ) from None
    try:
        moved = _move_aside(directory) if opts.fresh and directory.exists() else None
        cells = plan.cells
        done = _load_finished(directory, base, cells, name)  # again, now under the lock
        manifest = _manifest(base, variants, seeds, name, opts)
        atomic_write_json(directory / "config.json", manifest)
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
            results,
            summary,
            check_claims(summary),
            ran=ran,
            reused=len(cells) - ran,
            moved_to=moved,
        )
        ablate_export.write_ablation_outputs(result, manifest)
        return result
    finally:
        lock.release()


def _move_aside(directory: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = directory.with_name(f"{directory.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = directory.with_name(f"{directory.name}.old-{stamp}-{n}")
        n += 1
    directory.rename(target)
    return target


def _changed(directory: Path, name: str, why: str) -> BaseConfigChangedError:
    return BaseConfigChangedError(
        f"{directory} holds cells of a different base config ({why}); rerun with --fresh to "
        f"move them aside, or pick another --name than {name!r}"
    )


def _load_finished(
    directory: Path, base: BaseConfig, cells: Sequence[Cell], name: str
) -> dict[str, CellResult]:
    """Finished cells on disk for the planned ones; refuses cells of another base config."""
    manifest = directory / "config.json"
    if manifest.exists():
        try:
            info = json.loads(manifest.read_text())
        except (OSError, ValueError):
            info = {}
        old = info.get("base_hash")
        if old and old != base.hash:
            raise _changed(directory, name, f"hash {old}, now {base.hash}")
        # Another version of the trainer may give other numbers for the same config.
        was, now = info.get("versions", {}).get("dgkd"), _versions().get("dgkd")
        if was and now and was != now:
            raise BaseConfigChangedError(
                f"{directory} holds cells computed by dgkd {was}, this is dgkd {now}; rerun "
                f"with --fresh to move them aside, or pick another --name than {name!r}"
            )
    done: dict[str, CellResult] = {}
    for cell in cells:
        path = directory / "cells" / f"{cell.key}.json"
        if not path.exists():
            continue
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: run the cell again and overwrite it
        if obj.get("config_hash") != cell.hash:
            raise _changed(
                directory,
                name,
                f"cell {cell.key} has config hash {obj.get('config_hash')}, expected {cell.hash}",
            )
        done[cell.key] = CellResult.from_json(obj)
    return done


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("dgkd", "torch", "numpy", "scipy", "pandas", "mnist1d", "optuna", "ray"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _manifest(
    base: BaseConfig,
    variants: Sequence[str],
    seeds: Sequence[int],
    name: str,
    opts: AblationOptions,
) -> dict[str, Any]:
    """What ``config.json`` records: enough to rerun and to judge the numbers."""
    first = plan_cells(base.config, variants[:1], seeds[:1])[0]
    return {
        "name": name,
        "base_hash": base.hash,
        "base": {
            "source": base.source,
            "study": base.study,
            "params": dict(base.params),
            "storage": base.storage,
            "overrides": dict(base.overrides),
            "config": base.config.to_dict(),
        },
        "variants": {
            v: {"doc": VARIANTS[v].doc, "changes": dict(VARIANTS[v].changes)} for v in variants
        },
        "seeds": list(seeds),
        "teacher_key": first.teacher_key,
        "statistics": {
            "confidence": CONFIDENCE,
            "bootstrap": f"percentile, {N_RESAMPLES} resamples, seed 0",
            "paired_test": "paired t-test (scipy.stats.ttest_rel), two-sided",
            "correction": "Holm across the variants, per metric",
            "p_improve": "Mann-Whitney U / (n_variant * n_full)",
        },
        "backend": opts.backend,
        "workers": opts.workers,
        "command": ["dgkd-ablate", *opts.argv],
        "versions": _versions(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _prepare_teacher(cfg: TrainConfig, progress: bool) -> None:
    """Train or load the shared teacher once, before cells start, so no cell races for it."""
    from dgkd.loop import resolve_device
    from dgkd.teacher import load_teacher
    from dgkd.train import splits_for

    splits = splits_for(cfg)
    load_teacher(cfg, splits, device=resolve_device(cfg.device), progress=progress)


def _run_pending(
    base: BaseConfig,
    pending: Sequence[Cell],
    done: dict[str, CellResult],
    directory: Path,
    opts: AblationOptions,
    *,
    total: int,
) -> int:
    """Run ``pending`` cells with the chosen executor, storing each as it finishes."""
    if not pending:
        return 0
    _prepare_teacher(base.config, opts.progress)
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
            )
            atomic_write_json(directory / "cells" / f"{key}.json", res.to_json())
            done[key] = res
            ran += 1
            line = _cell_line(res)
            bar.advance(line)
            if opts.log is not None:
                opts.log(f"[{len(done)}/{total}] {line}")

        if opts.backend == "ray":
            _run_ray(pending, finished, address=opts.address, in_flight=opts.workers)
        elif (opts.workers or 1) > 1:
            _run_processes(pending, finished, workers=opts.workers or 1)
        else:
            for cell in pending:
                try:
                    out = run_cell(cell.config.to_dict())
                except Exception as exc:
                    raise _failed(cell, exc) from exc
                finished(cell.key, out)
    return ran


def _cell_line(res: CellResult) -> str:
    if res.status == "diverged":
        where = res.diverged or {}
        return f"{res.variant} seed {res.seed}: diverged at epoch {where.get('epoch')}"
    return (
        f"{res.variant} seed {res.seed}: test_acc {res.value('test_acc'):.4f} "
        f"({res.duration_s:.1f} s)"
    )


def _failed(cell: Cell, exc: BaseException) -> CellFailedError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CellFailedError(
        f"cell {cell.variant} seed {cell.seed} failed: {msg}; finished cells are saved, "
        "rerun the same command to continue"
    )


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_processes(
    cells: Sequence[Cell], finished: Callable[[str, Mapping[str, Any]], None], *, workers: int
) -> None:
    """Cells in ``workers`` spawned processes, each with its share of the cores for torch."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, _cores() // workers)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    futures = {pool.submit(run_cell, c.config.to_dict()): c for c in cells}
    error: CellFailedError | None = None
    try:
        pending = set(futures)
        while pending:
            complete, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in complete:
                cell = futures[fut]
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is not None:
                    if error is None:  # stop starting cells; let the running ones finish
                        error = _failed(cell, exc)
                        for other in pending:
                            other.cancel()
                    continue
                finished(cell.key, fut.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise error


def _run_ray(
    cells: Sequence[Cell],
    finished: Callable[[str, Mapping[str, Any]], None],
    *,
    address: str | None,
    in_flight: int | None,
) -> None:
    """Cells as Ray tasks (one CPU each) on an existing cluster or a new local one."""
    import ray

    started = not ray.is_initialized()
    if started:
        env = {k: os.environ[k] for k in ("DGKD_CACHE",) if k in os.environ}
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": env} if env else None,
            )
        except ConnectionError as exc:
            where = address or os.environ.get("RAY_ADDRESS") or "the latest local cluster"
            raise AblateError(
                f"cannot connect to the Ray cluster at {where} ({exc}); check --address, or "
                "give --address local to start a private one"
            ) from None
    task = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
    queue = list(cells)
    running: dict[Any, Cell] = {}
    limit = in_flight or len(queue)
    try:
        while queue or running:
            while queue and len(running) < limit:
                cell = queue.pop(0)
                running[task.remote(cell.config.to_dict())] = cell
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                cell = running.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:
                    for other in running:
                        ray.cancel(other)
                    raise _failed(cell, _ray_cause(exc)) from exc
                finished(cell.key, out)
    finally:
        if started:
            ray.shutdown()


def _ray_cell(config: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # the task holds one CPU
    return run_cell(config)


def _ray_cause(exc: BaseException) -> BaseException:
    """The user's exception inside a RayTaskError, when there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def summarize_cells(cells: Sequence[CellResult], variants: Sequence[str]) -> list[dict[str, Any]]:
    """One row per variant: counts, then for each metric n/mean/std/CI, the paired
    difference to ``full`` with its CI, the paired t-test p (raw and Holm-corrected across the
    variants) and the probability of improvement over ``full``.

    Diverged cells count in ``diverged`` and are missing values in the statistics; a pair is
    used only when both its variant cell and its ``full`` cell finished.
    """
    seeds = sorted({c.seed for c in cells})
    by = {(c.variant, c.seed): c for c in cells}

    def column(variant: str, metric: str) -> list[float]:
        return [by[(variant, s)].value(metric) if (variant, s) in by else math.nan for s in seeds]

    rows: list[dict[str, Any]] = []
    for v in variants:
        own = [by[(v, s)] for s in seeds if (v, s) in by]
        ok = [c for c in own if c.status == "ok"]
        ref_ok = {c.seed for c in cells if c.variant == REFERENCE and c.status == "ok"}
        rows.append(
            {
                "variant": v,
                "description": VARIANTS[v].doc,
                "n": len(ok),
                "diverged": sum(c.status == "diverged" for c in own),
                "n_pairs": sum(c.seed in ref_ok for c in ok),
            }
        )
    for metric, spec in METRICS.items():
        ref = column(REFERENCE, metric)
        for row in rows:
            values = column(row["variant"], metric)
            s = summarize(values)
            row.update(
                {
                    f"{metric}_mean": s.mean,
                    f"{metric}_std": s.std,
                    f"{metric}_ci_low": s.ci_low,
                    f"{metric}_ci_high": s.ci_high,
                }
            )
            if row["variant"] == REFERENCE:
                cmp = None
            else:
                cmp = compare_paired(values, ref, higher_is_better=spec.higher_is_better)
            row.update(
                {
                    f"{metric}_delta": cmp.delta if cmp else math.nan,
                    f"{metric}_delta_ci_low": cmp.delta_ci_low if cmp else math.nan,
                    f"{metric}_delta_ci_high": cmp.delta_ci_high if cmp else math.nan,
                    f"{metric}_p": cmp.p if cmp else math.nan,
                    f"{metric}_p_holm": math.nan,  # filled in below, across the variants
                    f"{metric}_p_improve": cmp.p_improve if cmp else math.nan,
                }
            )
        adjusted = holm([row[f"{metric}_p"] for row in rows])
        for row, p in zip(rows, adjusted, strict=True):
            row[f"{metric}_p_holm"] = p
    return rows


@dataclass(frozen=True)
class Claim:
    """One of the seed's claims for DGKD over DKD, checked on the paired differences.

    The numbers are ``full - no_grad_term`` (DGKD minus DKD) with the bootstrap CI. ``verdict``
    is ``"supported"`` when the CI excludes zero in the claimed direction *and* the
    Holm-corrected paired t-test agrees (p < ``ALPHA``), ``"opposite"`` when both say so the
    other way, ``"no difference"`` when the CI contains zero and p >= ``ALPHA``,
    ``"inconclusive"`` when the two disagree (with few seeds the percentile bootstrap is
    narrow, so a CI alone is not trusted), and ``"not checked"`` when ``no_grad_term`` is not
    in the ablation or has fewer than two seed pairs.
    """

    topic: str  # accuracy | fidelity | calibration | compactness
    metric: str
    verdict: str
    delta: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    n_pairs: int = 0
    note: str = ""  # why it was not checked


def check_claims(summary: Sequence[Mapping[str, Any]]) -> list[Claim]:
    """The seed's claims (DGKD vs DKD: accuracy, fidelity, calibration, compactness) checked."""
    row = next((r for r in summary if r["variant"] == "no_grad_term"), None)
    out = []
    for topic, metric in CLAIMS:
        if row is None or row["n_pairs"] < 2 or not math.isfinite(row[f"{metric}_delta_ci_low"]):
            if row is None:
                note = "add no_grad_term to --variants"
            else:
                note = (
                    f"{row['n_pairs']} seed pair(s) of full and no_grad_term finished with this "
                    "metric; 2 or more are needed"
                )
            pairs = row["n_pairs"] if row else 0
            out.append(Claim(topic, metric, "not checked", n_pairs=pairs, note=note))
            continue
        # The summary holds no_grad_term - full; the claim reads full - no_grad_term.
        delta = -row[f"{metric}_delta"]
        low, high = -row[f"{metric}_delta_ci_high"], -row[f"{metric}_delta_ci_low"]
        sign = 1.0 if METRICS[metric].higher_is_better else -1.0
        beyond_ci = low > 0 or high < 0
        significant = row[f"{metric}_p_holm"] < ALPHA
        if beyond_ci and significant:
            verdict = "supported" if delta * sign > 0 else "opposite"
        elif not beyond_ci and not significant:
            verdict = "no difference"
        else:
            verdict = "inconclusive"
        out.append(
            Claim(
                topic,
                metric,
                verdict,
                delta,
                low,
                high,
                row[f"{metric}_p"],
                row[f"{metric}_p_holm"],
                row["n_pairs"],
            )
        )
    return out

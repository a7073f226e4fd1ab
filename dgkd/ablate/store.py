"""The on-disk store of an ablation: ``<out>/ablate/<name>/`` with one JSON file per cell.

Each finished cell is written atomically under ``cells/`` with the hash of its full config;
``config.json`` records the base, the seeds and the versions. A rerun reuses the cells already
there, and a directory of another base config (or another dgkd release) is refused instead of
being mixed with new cells.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dgkd.ablate.base import BaseConfig
from dgkd.ablate.cells import Cell, CellResult
from dgkd.ablate.errors import AblateError, BaseConfigChangedError
from dgkd.ablate.options import AblationOptions
from dgkd.ablate.variants import VARIANTS
from dgkd.io import atomic_write_json

__all__ = [
    "CELLS_DIR",
    "MANIFEST_FILE",
    "ablation_dir",
    "check_writable",
    "directory_lock",
    "load_finished",
    "manifest",
    "save_cell",
    "versions",
    "write_manifest",
]

CELLS_DIR = "cells"  # one <variant>-teacher<teacher_seed>-seed<seed>.json per finished cell
MANIFEST_FILE = "config.json"


def ablation_dir(out_dir: str | os.PathLike[str], name: str) -> Path:
    """``<out_dir>/ablate/<name>``."""
    return Path(out_dir) / "ablate" / name


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold ``<parent>/.<name>.lock`` for a run writing ``directory`` (created first).

    Raises:
        AblateError: another dgkd-ablate holds it.
    """
    from filelock import FileLock, Timeout

    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory.parent / f".{directory.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise AblateError(
            f"another dgkd-ablate is running on {directory}; wait for it or use another --name"
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_writable(directory: Path) -> None:
    """Refuse, before any work, a results directory that cannot be created or written."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise AblateError(f"cannot write results under {existing}; pass a writable --out")


def save_cell(directory: Path, result: CellResult) -> None:
    """Store a finished cell atomically: a killed run leaves whole cell files only."""
    atomic_write_json(directory / CELLS_DIR / f"{result.key}.json", result.to_json())


def load_finished(
    directory: Path, base: BaseConfig, cells: Sequence[Cell], name: str
) -> dict[str, CellResult]:
    """Finished cells on disk for the planned ones, by :attr:`Cell.key`.

    Raises:
        BaseConfigChangedError: the directory holds cells of another base config or of another
            dgkd version.
    """
    path = directory / MANIFEST_FILE
    if path.exists():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = {}
        old = info.get("base_hash")
        if old and old != base.hash:
            raise _changed(directory, name, f"hash {old}, now {base.hash}")
        # Another version of the trainer (or of torch, which the teachers' bits depend on) may
        # give other numbers for the same config.
        for pkg in ("dgkd", "torch"):
            was, now = info.get("versions", {}).get(pkg), versions().get(pkg)
            if was and now and was != now:
                raise BaseConfigChangedError(
                    f"{directory} holds cells computed with {pkg} {was}, this is {pkg} {now}; "
                    f"rerun with --fresh to move them aside, or pick another --name than {name!r}"
                )
        if info and "teacher_seeds" not in info:
            raise BaseConfigChangedError(
                f"{directory} holds cells from before teachers were a factor (one teacher, "
                f"trained differently); rerun with --fresh to move them aside, or pick another "
                f"--name than {name!r}"
            )
    done: dict[str, CellResult] = {}
    for cell in cells:
        cell_path = directory / CELLS_DIR / f"{cell.key}.json"
        if not cell_path.exists():
            continue
        try:
            obj = json.loads(cell_path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: run the cell again and overwrite it
        if obj.get("config_hash") != cell.hash:
            raise _changed(
                directory,
                name,
                f"cell {cell.key} has config hash {obj.get('config_hash')}, expected {cell.hash}",
            )
        if obj.get("teacher_key") != cell.teacher_key:
            raise _changed(
                directory,
                name,
                f"cell {cell.key} distilled teacher {obj.get('teacher_key')}, this config's "
                f"teacher is {cell.teacher_key}",
            )
        done[cell.key] = CellResult.from_json(obj)
    return done


def _changed(directory: Path, name: str, why: str) -> BaseConfigChangedError:
    return BaseConfigChangedError(
        f"{directory} holds cells of a different base config ({why}); rerun with --fresh to "
        f"move them aside, or pick another --name than {name!r}"
    )


def versions() -> dict[str, str]:
    """Python's and the installed packages' versions that can change the numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("dgkd", "torch", "numpy", "scipy", "pandas", "mnist1d", "optuna", "ray"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def manifest(
    base: BaseConfig,
    opts: AblationOptions,
    *,
    name: str,
    variants: Sequence[str],
    seeds: Sequence[int],
    teacher_keys: dict[int, str],
) -> dict[str, Any]:
    """What ``config.json`` records: enough to rerun and to judge the numbers."""
    from dgkd.stats import CONFIDENCE, N_RESAMPLES

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
        "teacher_seeds": list(teacher_keys),
        "teacher_key": next(iter(teacher_keys.values())),  # the first teacher's
        "teacher_keys": {str(t): k for t, k in teacher_keys.items()},
        "statistics": {
            "confidence": CONFIDENCE,
            "bootstrap": (
                f"percentile, {N_RESAMPLES} resamples, seed 0"
                + ("; two-level: teachers, then seeds within each" if len(teacher_keys) > 1 else "")
            ),
            "paired_test": (
                "paired t-test (scipy.stats.ttest_rel) on the seed pairs, two-sided"
                if len(teacher_keys) == 1
                else "one-sample t-test of the teacher-level mean differences "
                "(teachers as a random factor), two-sided"
            ),
            "correction": "Holm across the variants, per metric",
            "p_improve": "Mann-Whitney U / (n_variant * n_full)",
        },
        "teachers": len(teacher_keys),
        "backend": opts.backend,
        "workers": opts.workers,
        "population": opts.population,  # most cells trained together
        "command": ["dgkd-ablate", *opts.argv],
        "versions": versions(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    atomic_write_json(directory / MANIFEST_FILE, info)

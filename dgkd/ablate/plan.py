"""The plan of an ablation, checked before anything is written: its directory and its cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dgkd.ablate.base import BaseConfig
from dgkd.ablate.cells import Cell, CellResult, plan_cells
from dgkd.ablate.errors import AblateError
from dgkd.ablate.options import TEACHERS, AblationOptions
from dgkd.ablate.store import ablation_dir, check_writable, load_finished
from dgkd.ablate.variants import parse_variants

__all__ = ["Plan", "preflight"]


@dataclass(frozen=True)
class Plan:
    """What an ablation will do: its directory, cells, and the cells already finished there."""

    name: str
    directory: Path
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    teacher_seeds: tuple[int, ...]
    cells: list[Cell]
    finished: dict[str, CellResult]  # by Cell.key; empty with --fresh

    @property
    def pending(self) -> list[Cell]:
        """The cells still to run."""
        return [c for c in self.cells if c.key not in self.finished]


def preflight(base: BaseConfig, opts: AblationOptions) -> Plan:
    """Check the names and the results directory without changing anything.

    Raises:
        AblateError: an unknown variant, a bad name, an unwritable directory, several teachers
            with a ``teacher_checkpoint``, or (without
            ``fresh``) a directory holding cells of a different base config.
    """
    variants = parse_variants(opts.variants)
    seeds = tuple(range(opts.n_seeds))
    name = opts.name or base.default_name
    if opts.directory is None and (not name or "/" in name or "\\" in name or name.startswith(".")):
        raise AblateError(f"--name must be a plain directory name, got {name!r}")
    directory = opts.directory or ablation_dir(opts.out_dir, name)
    check_writable(directory)
    first = base.config.teacher_seed
    one = bool(base.config.teacher_checkpoint)
    teachers = opts.teachers if opts.teachers is not None else (1 if one else TEACHERS)
    teacher_seeds = tuple(range(first, first + teachers))
    if teachers > 1 and one:
        raise AblateError(
            "teacher_checkpoint names one teacher, so --teachers must be 1 (or drop "
            "teacher_checkpoint to train one teacher per teacher seed)"
        )
    cells = plan_cells(base.config, variants, seeds, teacher_seeds)
    finished = {} if opts.fresh else load_finished(directory, base, cells, name)
    return Plan(name, directory, variants, seeds, teacher_seeds, cells, finished)

"""Per-trial files of a search: every trial's history, its students, checkpoints.

A trial writes ``history/trial_<number>.csv`` (one row per epoch it trained, pruned and failed
trials too) and, when it completes, each seed's student (a ``state_dict``) to
``students/trial_<number>/seed_<seed>.pt``. Only complete trials keep students: a pruned or
failed trial has none worth rerunning (a default MNIST-1D student is about 25 kB, so a 200-trial
search of 4 seeds keeps about 20 MB). The exporter (:func:`keep_best_student`) copies the best
trial's first seed to ``best_student.pt`` (``best.json`` says which trial and seed it is, and
names every seed's file). While it trains, a trial keeps its state in
``checkpoints/trial_<number>/`` (:func:`trial_checkpoint`): deleted when it ends, kept when it
is interrupted, for the trial that re-runs it to resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dgkd.io import atomic_write_bytes, atomic_write_text
from dgkd.runfiles import history_csv, save_student
from dgkd.search.records import FINAL_STATES, INTERRUPTED, TrialRecord, TrialState

__all__ = [
    "BEST_STUDENT",
    "CHECKPOINTS_DIR",
    "HISTORY_DIR",
    "STUDENTS_DIR",
    "history_csv",
    "save_student",
    "save_students",
    "seed_file",
    "checkpoint_path",
    "history_path",
    "keep_best_student",
    "student_path",
    "trial_students",
    "trial_checkpoint",
    "write_history",
]

HISTORY_DIR = "history"  # under runs/<study>/
STUDENTS_DIR = "students"  # students/trial_<n>/seed_<s>.pt: every complete trial's
BEST_STUDENT = "best_student.pt"
CHECKPOINTS_DIR = "checkpoints"  # the state of trials running, or interrupted and not yet re-run


def history_path(out_dir: str | Path, number: int) -> Path:
    """``<out_dir>/history/trial_<number>.csv``."""
    return Path(out_dir) / HISTORY_DIR / f"trial_{number}.csv"


def seed_file(seed: int) -> str:
    """``seed_<seed>.pt``: the name of one seed's student."""
    return f"seed_{seed}.pt"


def student_path(out_dir: str | Path, number: int, seed: int) -> Path:
    """``<out_dir>/students/trial_<number>/seed_<seed>.pt``: a complete trial's student."""
    return Path(out_dir) / STUDENTS_DIR / f"trial_{number}" / seed_file(seed)


def trial_students(out_dir: str | Path, number: int) -> dict[int, Path]:
    """Trial ``number``'s saved students by seed (empty when it kept none)."""
    folder = Path(out_dir) / STUDENTS_DIR / f"trial_{number}"
    out = {}
    for path in folder.glob("seed_*.pt"):
        seed = path.stem.removeprefix("seed_")
        if seed.lstrip("-").isdigit():
            out[int(seed)] = path
    return dict(sorted(out.items()))


def save_students(
    out_dir: str | Path, number: int, seeds: Sequence[int], models: Sequence[Any]
) -> list[Path]:
    """Each seed's student of trial ``number`` at :func:`student_path`, atomically."""
    return [
        save_student(student_path(out_dir, number, seed), model)
        for seed, model in zip(seeds, models, strict=True)
    ]


def checkpoint_path(out_dir: str | Path, number: int) -> Path:
    """``<out_dir>/checkpoints/trial_<number>/``: where trial ``number`` keeps its state."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"trial_{number}"


@contextlib.contextmanager
def trial_checkpoint(out_dir: str | Path, number: int, retry_of: int | None) -> Iterator[Path]:
    """The directory trial ``number`` keeps its state in (:func:`checkpoint_path`).

    A trial that re-runs an interrupted one (``retry_of``) takes that one's directory over, and
    so resumes where it stopped. The directory is deleted when the block ends, except by
    ``KeyboardInterrupt`` (Ctrl-C, SIGTERM): the trial's own re-run resumes it then.
    """
    path = checkpoint_path(out_dir, number)
    if retry_of is not None and not path.exists():
        with contextlib.suppress(FileNotFoundError):  # it saved nothing (or was taken over)
            os.replace(checkpoint_path(out_dir, retry_of), path)
    try:
        yield path
    except KeyboardInterrupt:
        raise
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


def write_history(out_dir: str | Path, number: int, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write a trial's per-epoch rows to :func:`history_path` (atomically)."""
    return atomic_write_text(history_path(out_dir, number), history_csv(rows))


def keep_best_student(
    out_dir: str | Path, records: Sequence[TrialRecord], best: int | None
) -> Path | None:
    """Copy trial ``best``'s first seed's student to ``best_student.pt`` (when it is not that
    already) and return the seed's file; delete the students of finished trials that did not
    complete, and the checkpoints of finished trials that will not be re-run. Safe to run from
    several processes at once."""
    out = Path(out_dir)
    for r in records:  # a killed process may leave one; an interrupted trial's re-run needs its
        if r.state in FINAL_STATES and not r.fail_reason.startswith(INTERRUPTED):
            shutil.rmtree(checkpoint_path(out, r.number), ignore_errors=True)
        if r.state in FINAL_STATES and r.state != TrialState.COMPLETE:
            shutil.rmtree(out / STUDENTS_DIR / f"trial_{r.number}", ignore_errors=True)
    if best is None:
        return None
    students = trial_students(out, best)
    if not students:
        return None
    first = next(iter(students.values()))
    target = out / BEST_STUDENT
    data = first.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        atomic_write_bytes(target, data)
    return first

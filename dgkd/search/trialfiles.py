"""Per-trial files of a search: every trial's history, the best trial's student, checkpoints.

A trial writes ``history/trial_<number>.csv`` (one row per epoch it trained, pruned and failed
trials too) and, when it completes, its student's ``state_dict`` to ``students/<number>.pt``.
The exporter (:func:`keep_best_student`) moves the best trial's student to ``best_student.pt``
and deletes the students of finished trials that are not the best (they can never become it),
so the directory holds one student, plus those of trials still running. While it trains, a
trial keeps its state in ``checkpoints/trial_<number>/`` (:func:`trial_checkpoint`): deleted
when it ends, kept when it is interrupted, for the trial that re-runs it to resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dgkd.io import atomic_write_text
from dgkd.runfiles import history_csv, save_student
from dgkd.search.records import FINAL_STATES, INTERRUPTED, TrialRecord

__all__ = [
    "BEST_STUDENT",
    "CHECKPOINTS_DIR",
    "HISTORY_DIR",
    "STUDENTS_DIR",
    "history_csv",
    "save_student",
    "checkpoint_path",
    "history_path",
    "keep_best_student",
    "student_path",
    "trial_checkpoint",
    "write_history",
]

HISTORY_DIR = "history"  # under runs/<study>/
STUDENTS_DIR = "students"  # students of trials not yet judged (running, or the best so far)
BEST_STUDENT = "best_student.pt"
CHECKPOINTS_DIR = "checkpoints"  # the state of trials running, or interrupted and not yet re-run


def history_path(out_dir: str | Path, number: int) -> Path:
    """``<out_dir>/history/trial_<number>.csv``."""
    return Path(out_dir) / HISTORY_DIR / f"trial_{number}.csv"


def student_path(out_dir: str | Path, number: int) -> Path:
    """``<out_dir>/students/<number>.pt``: a completed trial's student until it is judged."""
    return Path(out_dir) / STUDENTS_DIR / f"{number}.pt"


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
) -> None:
    """Move trial ``best``'s student to ``best_student.pt``; delete those of finished trials
    that are not the best, and the checkpoints of finished trials that will not be re-run.
    Safe to run from several processes at once."""
    out = Path(out_dir)
    for r in records:  # a killed process may leave one; an interrupted trial's re-run needs its
        if r.state in FINAL_STATES and not r.fail_reason.startswith(INTERRUPTED):
            shutil.rmtree(checkpoint_path(out, r.number), ignore_errors=True)
    folder = out / STUDENTS_DIR
    if not folder.is_dir():
        return
    if best is not None:
        with contextlib.suppress(FileNotFoundError):  # already moved (here or by another process)
            os.replace(student_path(out, best), out / BEST_STUDENT)
    for r in records:
        if r.number != best and r.state in FINAL_STATES:
            student_path(out, r.number).unlink(missing_ok=True)

"""Tune's trial results as backend-neutral records.

Pruned means pruned. A trial reports its metrics after every epoch but the last; the last epoch
goes out with the final metrics and a ``dgkd_final`` flag. A trial stopped by the scheduler has
no flag and is recorded as PRUNED at its last epoch. A trial that diverged (or ended with a
non-finite value) sends a final report with ``dgkd_fail`` and is recorded as FAIL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgkd.search.common import is_finite_number
from dgkd.search.records import TrialRecord, TrialState

__all__ = [
    "EPOCH_KEY",
    "FAIL_KEY",
    "FINAL_KEY",
    "METRICS_KEY",
    "SEEDS_KEY",
    "ROW_KEY",
    "STUDENT_FILE",
    "Done",
    "classify",
    "grid_records",
    "to_record",
    "trial_records",
]

FINAL_KEY = "dgkd_final"  # 1.0 on a trial's last report: it ran to the end
FAIL_KEY = "dgkd_fail"  # why a trial failed without raising (divergence)
METRICS_KEY = "dgkd_metrics"  # the final metrics of train(), nested in the last report
EPOCH_KEY = "epoch"  # the scheduler's time attribute: epochs trained
SEEDS_KEY = "dgkd_seeds"  # the seeds and each seed's final metrics, as JSON
ROW_KEY = "dgkd_row"  # the epoch's metrics as JSON, for the trial's history
STUDENT_FILE = "student.pt"  # in a completed trial's checkpoint: its student's state_dict


def _error_text(error: BaseException | str | None) -> str:
    """One line naming an exception raised inside a trial (Ray wraps it)."""
    if error is None:
        return ""
    if isinstance(error, str):
        text = error
    else:
        cause = getattr(error, "cause", None)
        error = cause if isinstance(cause, BaseException) else error
        text = f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Failure #"):  # Tune's error file: the exception is last
        name, sep, message = lines[-1].partition(": ")
        return f"{name.rsplit('.', 1)[-1]}{sep}{message}"
    return lines[0] if lines else "error"


def classify(
    result: Mapping[str, Any], status: str, error: Any, metric: str
) -> tuple[TrialState, Any]:
    """``(state, value or reason)`` of a trial from its last report and Ray's status.

    Tune marks the last result of a trial that ended (ran out, or was stopped by the scheduler)
    with ``done``; a trial cut off by an interruption lacks it, even when Tune calls it
    TERMINATED, and runs again on resume.
    """
    if result.get(FAIL_KEY):
        return TrialState.FAIL, str(result[FAIL_KEY])
    if status == "ERROR" or error is not None:
        return TrialState.FAIL, _error_text(error) or "the trial raised (see its error.txt)"
    if result.get(FINAL_KEY):
        value = result.get(metric)
        if is_finite_number(value):
            return TrialState.COMPLETE, float(value)
        return TrialState.FAIL, f"{metric} is {value}"
    if status == "TERMINATED" and result.get("done"):
        return TrialState.PRUNED, None  # stopped by the scheduler before its final report
    if status == "RUNNING" or (status != "PENDING" and EPOCH_KEY in result):
        return TrialState.RUNNING, None
    return TrialState.WAITING, None


def _final_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """train()'s final metrics from the last report (nested, or flattened by Ray)."""
    nested = result.get(METRICS_KEY)
    prefix = METRICS_KEY + "/"
    items: list[tuple[str, Any]] = (
        list(nested.items())
        if isinstance(nested, dict)
        else [(k[len(prefix) :], v) for k, v in result.items() if k.startswith(prefix)]
    )
    return {k: (float(v) if is_finite_number(v) else math.nan) for k, v in items}


def _seeds(result: Mapping[str, Any]) -> dict[str, Any]:
    """The last report's seeds and per-seed metrics ({} when it has none)."""
    try:
        data = json.loads(result.get(SEEDS_KEY) or "{}")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if is_finite_number(value) else None


def to_record(
    number: int,
    params: dict[str, Any],
    result: Mapping[str, Any] | None,
    *,
    metric: str,
    status: str = "TERMINATED",
    error: Any = None,
) -> TrialRecord:
    """One Tune trial as a backend-neutral record.

    Args:
        number: The trial's number in the study (creation order).
        params: The searched parameters (the trial's config).
        result: Its last report (``Result.metrics`` / ``Trial.last_result``), {} if none.
        metric: The study's metric.
        status: Ray's trial status (TERMINATED, ERROR, RUNNING, PENDING, PAUSED).
        error: The exception (or text) of an errored trial.
    """
    result = dict(result or {})
    state, info = classify(result, status, error, metric)
    epoch_value = _number(result.get(EPOCH_KEY))
    epoch = None if epoch_value is None else int(epoch_value)
    seeds = _seeds(result)
    return TrialRecord(
        number=number,
        seeds=tuple(seeds.get("seeds", ())),
        seed_metrics=[
            {k: float(v) if is_finite_number(v) else math.nan for k, v in m.items()}
            for m in seeds.get("metrics", ())
        ],
        state=state,
        value=info if state == TrialState.COMPLETE else None,
        params=dict(params),
        duration_s=_number(result.get("time_total_s")),
        pruned_epoch=epoch if state == TrialState.PRUNED else None,
        metrics=_final_metrics(result) if state == TrialState.COMPLETE else {},
        fail_reason=info if state == TrialState.FAIL else "",
        fail_epoch=epoch if state == TrialState.FAIL else None,
    )


@dataclass
class Done:
    """A trial of a finished run: for the next run's searcher, and the files it leaves."""

    record: TrialRecord
    last_value: float | None  # the metric at its last report (a pruned trial's last epoch)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    student: Path | None = None  # its checkpoint's student.pt (complete trials)


def _history(result: Any) -> list[dict[str, Any]]:
    """The trial's epoch rows, from every report it made (the last try's, after a crash)."""
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or ROW_KEY not in getattr(frame, "columns", ()):
        return []
    rows: dict[int, dict[str, Any]] = {}
    for text in frame[ROW_KEY]:
        if not isinstance(text, str):
            continue
        try:
            row = json.loads(text)
        except ValueError:
            continue
        if isinstance(row, dict) and is_finite_number(row.get("epoch")):
            rows[int(row["epoch"])] = row
    return [rows[k] for k in sorted(rows)]


def _student(result: Any) -> Path | None:
    checkpoint = getattr(result, "checkpoint", None)
    path = getattr(checkpoint, "path", None)
    if not path or not (Path(path) / STUDENT_FILE).is_file():
        return None
    return Path(path) / STUDENT_FILE


def _creation_order(trial: Any, default: int) -> int:
    """A Tune trial's creation counter (its experiment tag starts with it; a restored run lists
    its trials in another order)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else default


def grid_records(grid: Any, metric: str, first: int) -> tuple[list[TrialRecord], list[Done]]:
    """Records of a ResultGrid, numbered from ``first`` in trial creation order."""
    results = list(grid)
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    if len(trials) != len(results):  # pragma: no cover - a Ray that hides its trials
        trials = [None] * len(results)
    pairs = sorted(zip(trials, results, strict=True), key=lambda p: _creation_order(p[0], 0))
    records, done = [], []
    for i, (trial, res) in enumerate(pairs):
        status = getattr(trial, "status", None)
        status = status or ("ERROR" if res.error is not None else "TERMINATED")
        metrics = res.metrics or {}
        record = to_record(
            first + i, res.config or {}, metrics, metric=metric, status=status, error=res.error
        )
        history = _history(res)
        record.curve = {
            int(row["epoch"]): float(row[metric])
            for row in history
            if is_finite_number(row.get(metric))
        }
        records.append(record)
        student = _student(res) if record.state == TrialState.COMPLETE else None
        done.append(Done(record, _number(metrics.get(metric)), history, student))
    return records, done


def trial_records(
    trials: Sequence[Any], metric: str, first: int, ended: Mapping[str, str]
) -> list[TrialRecord]:
    """Records of Tune ``Trial`` objects (live, from a callback)."""
    out = []
    ordered = sorted(trials, key=lambda t: _creation_order(t, 0))
    for i, t in enumerate(ordered):
        status = ended.get(t.trial_id, t.status)
        error = None
        if status == "ERROR":
            error = _safe(t.get_pickled_error) or _safe(t.get_error) or "the trial raised"
        out.append(
            to_record(first + i, t.config, t.last_result, metric=metric, status=status, error=error)
        )
    return out


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None

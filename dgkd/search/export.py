"""Search outputs (trials.csv, best.json, importance.csv, PNG plots), written atomically.

Both backends hand the same :class:`~dgkd.search.records.TrialRecord` list to
:func:`write_search_outputs`, so their files are identical in shape. Every file goes through a
temporary file and a rename (:mod:`dgkd.io`): a reader, or a crash mid-write, only ever sees a
whole old file or a whole new one. The generic writers (:func:`write_csv`, :func:`write_json`,
:func:`write_png`) serve any other table or figure the package produces; the figures themselves
are drawn by :mod:`dgkd.search.plots`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.io import atomic_write, atomic_write_text, finite_or_none
from dgkd.search.inmemory import memory_study, quiet_optuna
from dgkd.search.plots import (
    curve_figure,
    history_figure,
    importance_figure,
    learning_curves_figure,
    slice_figure,
)
from dgkd.search.records import TrialRecord, TrialState, completed
from dgkd.search.seeds import SEED_COLUMNS, baseline_record, seed_columns, seeds_frame
from dgkd.search.trialfiles import BEST_STUDENT, keep_best_student, trial_students

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from dgkd.config import TrainConfig
    from dgkd.study import Study

__all__ = [
    "BEST_FILE",
    "HISTORY_PLOT",
    "IMPORTANCE_FILE",
    "IMPORTANCE_PLOT",
    "LEARNING_CURVES_PLOT",
    "SLICE_PLOT",
    "TRIALS_FILE",
    "TRIAL_SEEDS_FILE",
    "best_record",
    "curve_plot_name",
    "importances",
    "jsonable",
    "train_command",
    "trials_frame",
    "write_csv",
    "write_json",
    "write_png",
    "write_search_outputs",
]

TRIALS_FILE = "trials.csv"
TRIAL_SEEDS_FILE = "trial_seeds.csv"  # one row per trial and seed
BEST_FILE = "best.json"
IMPORTANCE_FILE = "importance.csv"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"  # studies of two or more parameters
SLICE_PLOT = "slice.png"  # studies of two or more parameters
LEARNING_CURVES_PLOT = "learning_curves.png"  # the metric by epoch, every trial
_TRIAL_COLUMNS = ("duration_s", "pruned_epoch", "fail_reason", "fail_epoch")


# --- generic atomic writers -------------------------------------------------------------------


def write_csv(path: str | Path, frame: pd.DataFrame, *, float_format: str | None = None) -> Path:
    """Write ``frame`` (without its index) as CSV to ``path`` atomically."""
    return atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/infinite floats as None and tuples as lists (strict JSON)."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return jsonable(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (NaN becomes null) to ``path`` atomically."""
    import json

    text = json.dumps(jsonable(obj), indent=2, allow_nan=False, default=str) + "\n"
    return atomic_write_text(path, text)


def write_png(path: str | Path, figure: Figure, *, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically, then close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


# --- search tables ----------------------------------------------------------------------------


def best_record(records: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    """The COMPLETE record with the best value (lowest number on ties); None if there is none."""
    done = completed(records)
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda r: (sign * (r.value or 0.0), r.number))  # value: never None


def trials_frame(
    records: Sequence[TrialRecord],
    param_names: Sequence[str] = (),
    *,
    baseline: TrialRecord | None = None,
    metric: str = "val_acc",
) -> pd.DataFrame:
    """One row per trial: number, state, value, params_<name>..., duration_s, pruned_epoch,
    fail_reason, fail_epoch, seeds, value_std, value_se, delta_baseline, delta_baseline_se, then
    every final metric of ``train()`` (the seed means).

    ``value`` is the mean of ``metric`` over the trial's seeds; ``delta_baseline`` its paired
    difference to ``baseline`` (:mod:`dgkd.search.seeds`). Parameter columns follow
    ``param_names`` (then any other name seen); metric columns follow the order ``train()``
    returns them in. ``duration_s`` is the trial's wall time.
    """
    import pandas as pd

    names = list(param_names)
    for r in records:
        names += [k for k in r.params if k not in names]
    metric_names: list[str] = []
    for r in records:
        metric_names += [k for k in r.metrics if k not in metric_names and k not in _TRIAL_COLUMNS]
    rows = []
    for r in sorted(records, key=lambda r: r.number):
        row: dict[str, Any] = {"number": r.number, "state": r.state.value, "value": r.value}
        row.update(seed_columns(r, baseline, metric))
        row.update({f"params_{n}": r.params.get(n) for n in names})
        row.update(
            duration_s=r.duration_s,
            pruned_epoch=r.pruned_epoch,
            fail_reason=r.fail_reason,
            fail_epoch=r.fail_epoch,
        )
        row.update({m: r.metrics.get(m) for m in metric_names})
        rows.append(row)
    columns = [
        "number",
        "state",
        "value",
        *(f"params_{n}" for n in names),
        *_TRIAL_COLUMNS,
        *SEED_COLUMNS,
    ]
    frame = pd.DataFrame(rows, columns=[*columns, *metric_names])
    for col in ("pruned_epoch", "fail_epoch", "seeds"):
        frame[col] = frame[col].astype("Int64")
    frame["value"] = frame["value"].astype("float64")
    return frame


def importances(study: Study, records: Sequence[TrialRecord]) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA) over the COMPLETE records.

    Empty with fewer than two complete trials; ``{param: 1.0}`` for a one-parameter space.
    """
    searched = [p.name for p in study.space.searched()]
    done = [r for r in completed(records) if all(n in r.params for n in searched)]
    if len(done) < 2 or not searched:
        return {}
    if len(searched) == 1:
        return {searched[0]: 1.0}
    import optuna

    mem = memory_study(study, done)
    if len(mem.get_trials(deepcopy=False)) < 2:
        return {}
    with quiet_optuna():
        result = optuna.importance.get_param_importances(mem)
    return {k: float(v) for k, v in result.items()}


def train_command(cfg: TrainConfig) -> str:
    """The ``dgkd-train`` command that reruns ``cfg`` (every field that differs from default)."""
    from dgkd.config import TrainConfig

    default, changed = TrainConfig().to_dict(), []
    for key, value in cfg.to_dict().items():
        if value == default[key]:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        changed.append(f"--set {key}={value}")
    return " ".join(["dgkd-train", *changed])


def curve_plot_name(param: str) -> str:
    """File name of the metric-vs-parameter plot of a one-parameter study."""
    return f"accuracy_vs_{param}.png"


def write_search_outputs(
    study: Study,
    records: Sequence[TrialRecord],
    out_dir: str | Path,
    *,
    plots: bool = True,
    overrides: dict[str, Any] | None = None,
    verdict: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the search's result files under ``out_dir``; returns the paths written.

    Args:
        study: The study searched (space, metric, direction).
        records: Every trial so far, any state, from either backend.
        out_dir: ``runs/<study>/``.
        plots: Also compute importances and draw the PNG plots. A live search passes False
            between throttled refreshes: the tables are cheap, importances and plots are not.
        overrides: The ``--set`` changes the search ran with, so ``best.json`` holds the exact
            configuration of the best trial.
        verdict: The confirm stage's verdict, ``best.json``'s ``verdict`` block.
    """
    out = Path(out_dir)
    params = [p.name for p in study.space.searched()]
    best = best_record(records, study.direction)
    first = keep_best_student(out, records, None if best is None else best.number)
    baseline = baseline_record(study, records)
    frame = trials_frame(records, params, baseline=baseline, metric=study.metric)
    written = [write_csv(out / TRIALS_FILE, frame)]
    written.append(write_csv(out / TRIAL_SEEDS_FILE, seeds_frame(records)))
    summary = _best_summary(study, records, overrides, out, first)
    if verdict is not None:
        summary["verdict"] = verdict
    written.append(write_json(out / BEST_FILE, summary))
    if not plots:
        return written
    imp = importances(study, records)
    import pandas as pd

    frame = pd.DataFrame(
        {"param": list(imp), "importance": list(imp.values())}, columns=["param", "importance"]
    )
    written.append(write_csv(out / IMPORTANCE_FILE, frame))
    written.append(write_png(out / HISTORY_PLOT, history_figure(study, records)))
    written.append(write_png(out / LEARNING_CURVES_PLOT, learning_curves_figure(study, records)))
    if len(params) == 1:  # one parameter: importance is trivially 1, the curve says more
        fig = curve_figure(study, records, params[0])
        written.append(write_png(out / curve_plot_name(params[0]), fig))
    else:
        written.append(write_png(out / IMPORTANCE_PLOT, importance_figure(study, imp)))
        fig = slice_figure(study, memory_study(study, completed(records)))
        written.append(write_png(out / SLICE_PLOT, fig))
    return written


def _counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    counts = {state.lower(): 0 for state in TrialState}
    for r in records:
        counts[r.state.lower()] += 1
    return counts


def _best_summary(
    study: Study,
    records: Sequence[TrialRecord],
    overrides: dict[str, Any] | None,
    out_dir: Path,
    first: Path | None,
) -> dict[str, Any]:
    """best.json's content. ``seeds`` and ``seed_metrics`` pair up (``dgkd-train --config
    best.json`` reruns them all as one population); ``students`` maps each seed to its student's
    file (relative to the search's directory) and ``student`` is ``best_student.pt``, a copy of
    seed ``student_seed``'s."""
    best = best_record(records, study.direction)
    out: dict[str, Any] = {
        "study": study.name,
        "source": study.source,
        "metric": study.metric,
        "direction": study.direction,
        "trials": _counts(records),
        "number": None,
        "value": None,
        "params": None,
    }
    if best is None:
        return out
    cfg = study.config(best.params, overrides)
    students = trial_students(out_dir, best.number)
    out.update(
        number=best.number,
        value=best.value,
        params=dict(best.params),
        metrics=dict(best.metrics),  # the mean over its seeds
        seeds=list(best.seeds),  # config (its seed: the first) and --seed pick one
        seed_metrics=[dict(m) for m in best.seed_metrics],
        config=cfg.to_dict(),
        students={str(s): p.relative_to(out_dir).as_posix() for s, p in students.items()},
        student=BEST_STUDENT if first is not None else None,
        student_seed=None if first is None else _seed_of(first),
        command=train_command(cfg),
    )
    return out


def _seed_of(path: Path) -> int:
    return int(path.stem.removeprefix("seed_"))

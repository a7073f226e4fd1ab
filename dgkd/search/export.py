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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.io import atomic_write, atomic_write_text, finite_or_none
from dgkd.search.plots import curve_figure, history_figure, importance_figure
from dgkd.search.records import TrialRecord, TrialState, completed

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
    "TRIALS_FILE",
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
BEST_FILE = "best.json"
IMPORTANCE_FILE = "importance.csv"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
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


def trials_frame(records: Sequence[TrialRecord], param_names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial: number, state, value, params_<name>..., duration_s, pruned_epoch,
    fail_reason, fail_epoch, then every final metric of ``train()``.

    Parameter columns follow ``param_names`` (then any other name seen); metric columns follow the
    order ``train()`` returns them in. ``duration_s`` is the trial's wall time.
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
        row.update({f"params_{n}": r.params.get(n) for n in names})
        row.update(
            duration_s=r.duration_s,
            pruned_epoch=r.pruned_epoch,
            fail_reason=r.fail_reason,
            fail_epoch=r.fail_epoch,
        )
        row.update({m: r.metrics.get(m) for m in metric_names})
        rows.append(row)
    columns = ["number", "state", "value", *(f"params_{n}" for n in names), *_TRIAL_COLUMNS]
    frame = pd.DataFrame(rows, columns=[*columns, *metric_names])
    for col in ("pruned_epoch", "fail_epoch"):
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

    dists = study.space.distributions()
    mem = optuna.create_study(direction=study.direction)  # type: ignore[arg-type]
    trials = []
    for r in done:
        params = {n: r.params[n] for n in searched}
        try:  # a value outside the space (an edited space file) is left out, not fatal
            trials.append(
                optuna.trial.create_trial(params=params, distributions=dists, value=r.value)
            )
        except ValueError:
            continue
    if len(trials) < 2:
        return {}
    mem.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    """
    out = Path(out_dir)
    params = [p.name for p in study.space.searched()]
    written = [write_csv(out / TRIALS_FILE, trials_frame(records, params))]
    written.append(write_json(out / BEST_FILE, _best_summary(study, records, overrides)))
    if not plots:
        return written
    imp = importances(study, records)
    import pandas as pd

    frame = pd.DataFrame(
        {"param": list(imp), "importance": list(imp.values())}, columns=["param", "importance"]
    )
    written.append(write_csv(out / IMPORTANCE_FILE, frame))
    written.append(write_png(out / HISTORY_PLOT, history_figure(study, records)))
    written.append(write_png(out / IMPORTANCE_PLOT, importance_figure(study, imp)))
    if len(params) == 1:
        fig = curve_figure(study, records, params[0])
        written.append(write_png(out / curve_plot_name(params[0]), fig))
    return written


def _counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    counts = {state.lower(): 0 for state in TrialState}
    for r in records:
        counts[r.state.lower()] += 1
    return counts


def _best_summary(
    study: Study, records: Sequence[TrialRecord], overrides: dict[str, Any] | None
) -> dict[str, Any]:
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
    out.update(
        number=best.number,
        value=best.value,
        params=dict(best.params),
        metrics=dict(best.metrics),
        config=cfg.to_dict(),
        command=train_command(cfg),
    )
    return out

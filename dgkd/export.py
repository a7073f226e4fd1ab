"""Search outputs (trials.csv, best.json, importance.csv, PNG plots), written atomically.

Both backends hand the same :class:`~dgkd.trials.TrialRecord` list to
:func:`write_search_outputs`, so their files are identical in shape. Every file goes through a
temporary file and a rename (:mod:`dgkd.io`): a reader, or a crash mid-write, only ever sees a
whole old file or a whole new one. The generic writers (:func:`write_csv`, :func:`write_json`,
:func:`write_png`) serve any other table or figure the package produces.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.io import atomic_write, atomic_write_text
from dgkd.trials import TrialRecord

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
    "finished",
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
FINAL_STATES = ("COMPLETE", "PRUNED", "FAIL")
_TRIAL_COLUMNS = ("duration_s", "pruned_epoch", "fail_reason", "fail_epoch")


# --- generic atomic writers -------------------------------------------------------------------


def write_csv(path: str | Path, frame: pd.DataFrame, *, float_format: str | None = None) -> Path:
    """Write ``frame`` (without its index) as CSV to ``path`` atomically."""
    return atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/infinite floats as None and tuples as lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
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


def _pyplot():
    """pyplot on the non-interactive Agg backend (files only; no display needed)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# --- search tables ----------------------------------------------------------------------------


def finished(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Records in a final state (COMPLETE, PRUNED, FAIL), by number."""
    return sorted((r for r in records if r.state in FINAL_STATES), key=lambda r: r.number)


def _complete(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [
        r
        for r in records
        if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)
    ]


def best_record(records: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    """The COMPLETE record with the best value (lowest number on ties); None if there is none."""
    done = _complete(records)
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda r: (sign * r.value, r.number))


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
        row: dict[str, Any] = {"number": r.number, "state": r.state, "value": r.value}
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
    done = [r for r in _complete(records) if all(n in r.params for n in searched)]
    if len(done) < 2 or not searched:
        return {}
    if len(searched) == 1:
        return {searched[0]: 1.0}
    import optuna

    dists = study.space.distributions()
    mem = optuna.create_study(direction=study.direction)
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
    written.append(write_png(out / HISTORY_PLOT, _history_figure(study, records)))
    written.append(write_png(out / IMPORTANCE_PLOT, _importance_figure(study, imp)))
    if len(params) == 1:
        fig = _curve_figure(study, records, params[0])
        written.append(write_png(out / curve_plot_name(params[0]), fig))
    return written


def _counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    counts = {s.lower(): 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for r in records:
        key = r.state.lower()
        counts[key] = counts.get(key, 0) + 1
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


# --- plots ------------------------------------------------------------------------------------


def _history_figure(study: Study, records: Sequence[TrialRecord]):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted(_complete(records), key=lambda r: r.number)
    if done:
        xs, ys = [r.number for r in done], [r.value for r in done]
        ax.scatter(xs, ys, s=14, alpha=0.7, label=f"{study.metric} (complete)")
        pick = max if study.direction == "maximize" else min
        best, running = [], None
        for y in ys:
            running = y if running is None else pick(running, y)
            best.append(running)
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    pruned = [r.number for r in records if r.state == "PRUNED"]
    failed = [r.number for r in records if r.state == "FAIL"]
    for nums, marker, label in ((pruned, "|", "pruned"), (failed, "x", "failed")):
        if nums:  # along the bottom edge, outside the value scale
            ax.scatter(
                nums,
                [0.03] * len(nums),
                marker=marker,
                color="gray",
                label=label,
                transform=ax.get_xaxis_transform(),
            )
    if not (done or pruned or failed):
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", transform=ax.transAxes)
    else:
        last = max(r.number for r in records)
        ax.set_xlim(-0.5 - 0.02 * last, last + 0.5 + 0.02 * last)
    ax.set_xlabel("trial")
    ax.set_ylabel(study.metric)
    ax.set_title(f"{study.name}: optimization history ({study.direction} {study.metric})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def _importance_figure(study: Study, imp: dict[str, float]):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.5 * max(2, len(imp)) + 1.2))
    if imp:
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (PED-ANOVA, normalized)")
    else:
        ax.text(0.5, 0.5, "needs at least 2 complete trials", ha="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_title(f"{study.name}: parameter importance for {study.metric}")
    return fig


def _curve_figure(study: Study, records: Sequence[TrialRecord], param: str):
    """val_acc and test_acc of the complete trials against ``param``: one dot per trial, a
    running median to show the trend through trial noise, and the enqueued baseline (epsilon = 0,
    plain DKD, for eps_sweep) as dashed lines to compare against."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted(
        (r for r in _complete(records) if isinstance(r.params.get(param), (int, float))),
        key=lambda r: r.params[param],
    )
    baseline = next(
        (
            r
            for point in study.enqueue
            if list(point) == [param]
            for r in done
            if r.params[param] == point[param]
        ),
        None,
    )
    shown = False
    for key, color in (("val_acc", "tab:blue"), ("test_acc", "tab:orange")):
        pts = [(r.params[param], r.metrics.get(key)) for r in done]
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if not pts:
            continue
        xs, ys = (np.asarray(v, dtype=float) for v in zip(*pts, strict=True))
        ax.scatter(xs, ys, s=10, alpha=0.5, color=color, label=key)
        window = max(3, len(ys) // 10) | 1
        if len(ys) >= 2 * window:
            half = window // 2
            trend = [np.median(ys[max(0, i - half) : i + half + 1]) for i in range(len(ys))]
            ax.plot(xs, trend, color=color, lw=1.5, label=f"{key}, running median")
        if baseline is not None and baseline.metrics.get(key) is not None:
            value = baseline.metrics[key]
            ax.axhline(value, color=color, ls="--", lw=0.8, alpha=0.8)
        shown = True
    if baseline is not None:
        ax.plot([], [], "k--", lw=0.8, label=f"{param} = {baseline.params[param]:g} (baseline)")
    if not shown:
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel(param)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{study.name}: accuracy vs {param} ({len(done)} complete trials)")
    if shown:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig

"""The search's figures: optimization history, learning curves, parameter importance and slices
(two or more parameters), metric vs parameter (one).

Each function returns a matplotlib figure for :func:`dgkd.search.export.write_png`; pyplot runs
on the non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from dgkd.search.inmemory import quiet_optuna
from dgkd.search.records import TrialRecord, TrialState, completed

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

    from dgkd.study import Study

__all__ = [
    "curve_figure",
    "history_figure",
    "importance_figure",
    "learning_curves_figure",
    "slice_figure",
]


def _pyplot() -> Any:
    """pyplot on the non-interactive Agg backend (files only; no display needed)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def history_figure(study: Study, records: Sequence[TrialRecord]) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted(completed(records), key=lambda r: r.number)
    if done:
        xs = [r.number for r in done]
        ys = [r.value for r in done if r.value is not None]  # all: complete means a value
        ax.scatter(xs, ys, s=14, alpha=0.7, label=f"{study.metric} (complete)")
        pick = max if study.direction == "maximize" else min
        best: list[float] = []
        for y in ys:
            best.append(pick(best[-1], y) if best else y)
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    pruned = [r.number for r in records if r.state == TrialState.PRUNED]
    failed = [r.number for r in records if r.state == TrialState.FAIL]
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


def importance_figure(study: Study, imp: dict[str, float]) -> Figure:
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


def curve_figure(study: Study, records: Sequence[TrialRecord], param: str) -> Figure:
    """val_acc and test_acc of the complete trials against ``param``: one dot per trial, a
    running median to show the trend through trial noise, and the enqueued baseline (epsilon = 0,
    plain DKD, for eps_sweep) as dashed lines to compare against."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted(
        (r for r in completed(records) if isinstance(r.params.get(param), (int, float))),
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


def learning_curves_figure(study: Study, records: Sequence[TrialRecord]) -> Figure:
    """The metric of every trial by epoch (Optuna's intermediate values): complete trials in
    colour, pruned ones in gray up to the epoch they were stopped at, the best one in red."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    best_number = None
    done = completed(records)
    if done:
        sign = -1.0 if study.direction == "maximize" else 1.0
        best_number = min(done, key=lambda r: (sign * (r.value or 0.0), r.number)).number
    shown = set()
    for r in sorted(records, key=lambda r: r.number):
        if not r.curve:
            continue
        xs = sorted(r.curve)
        ys = [r.curve[x] for x in xs]
        if r.number == best_number:
            style = {"color": "tab:red", "lw": 2.0, "alpha": 1.0, "zorder": 3}
            label = f"best (#{r.number})"
        elif r.state == TrialState.COMPLETE:
            style, label = {"color": "tab:blue", "lw": 0.8, "alpha": 0.4}, "complete"
        else:
            style, label = {"color": "gray", "lw": 0.8, "alpha": 0.4}, r.state.lower()
        ax.plot(xs, ys, label=None if label in shown else label, **style)
        shown.add(label)
    if not shown:
        ax.text(0.5, 0.5, "no epoch reported yet", ha="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel(study.metric)
    ax.set_title(f"{study.name}: learning curves ({study.metric} by epoch)")
    ax.grid(alpha=0.3)
    return fig


def slice_figure(study: Study, mem: optuna.Study) -> Figure:
    """Optuna's slice plot (the metric against each parameter) of the complete trials."""
    import optuna

    plt = _pyplot()
    if not mem.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", transform=ax.transAxes)
        ax.set_title(f"{study.name}: slice plot")
        return fig
    with quiet_optuna():
        axes = optuna.visualization.matplotlib.plot_slice(mem, target_name=study.metric)
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    fig = cast("Figure", first.figure)
    fig.suptitle(f"{study.name}: {study.metric} against each parameter")
    return fig

"""Summaries of a cell's per-epoch curves, so "faster" can be compared on paired seeds.

The seed claims *faster* neural collapse, which the final NC1 alone cannot show: two runs can end
equally compact after collapsing at different speeds. Each cell keeps its per-epoch history
(``train_nc1``, ``val_acc``, ``val_ece``), and its NC1 curve is summarized into one number that
is then compared paired by seed like any final metric.

``nc1_auc`` = mean over the epochs of ln(NC1): the area under the log-NC1 curve divided by the
number of epochs. Why this summary:

- NC1 falls by orders of magnitude, roughly geometrically; on a log scale every epoch's relative
  reduction counts alike, so neither the first epochs (where NC1 is large) nor the last dominate.
- It needs no threshold, unlike "the first epoch with NC1 below x", whose answer depends on x and
  is undefined for a run that never gets there.
- A paired difference reads directly: exp(full - no_grad_term) is the geometric mean, over the
  epochs, of the ratio of the two runs' NC1 (0.8: NC1 20% lower on average along the way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["CURVES", "curve_metrics", "nc1_auc"]

CURVES = ("train_nc1", "val_acc", "val_ece")  # the per-epoch values a cell's history keeps


def nc1_auc(history: Sequence[Mapping[str, float]]) -> float:
    """Mean over the epochs of ln(``train_nc1``); NaN without a complete, positive curve."""
    values = [row.get("train_nc1", math.nan) for row in history]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        return math.nan
    return sum(math.log(v) for v in values) / len(values)


def curve_metrics(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The curve summaries a finished cell adds to its final metrics."""
    return {"nc1_auc": nc1_auc(history)}

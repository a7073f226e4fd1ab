"""The end-of-epoch evaluation of every member: validation accuracy and ECE, training NC1.

Recorded at every epoch (not only at the end) so that the seed's claims that are about the
*course* of training, "faster neural collapse" above all, can be measured on the curve. Pure
evaluation: the caller passes an eval-mode ``predict`` (no gradient, no BatchNorm update, no random
numbers), so the training itself is unchanged; it costs one eval-mode forward over the training
split per epoch on top of the validation pass. On an MNIST-1D validation pool the caller passes
the pool's first :data:`dgkd.data.EPOCH_VAL_EXAMPLES` (``Splits.epoch_val_split``): the per-epoch
``val_acc`` the pruner compares is that prefix's, the final one (``train``'s metrics) the pool's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from dgkd import metrics

__all__ = ["EPOCH_METRICS", "epoch_metrics"]

# The keys each member's per-epoch history row gains here.
EPOCH_METRICS = ("val_acc", "val_ece", "train_nc1")

# predict(x) -> eval-mode (logits, features), (K, N, C) and (K, N, F) for K members.
Predict = Callable[[Tensor], tuple[Tensor, Tensor]]


def epoch_metrics(
    predict: Predict,
    val: tuple[Tensor, Tensor],
    train: tuple[Tensor, Tensor],
    num_classes: int,
) -> list[dict[str, float]]:
    """Each member's ``val_acc``, ``val_ece`` and ``train_nc1`` after an epoch.

    Args:
        predict: Eval-mode logits and features of the K stacked members for inputs ``x``.
        val: The validation inputs and labels evaluated per epoch (a pool's prefix; empty:
            ``val_acc``, ``val_ece`` are NaN).
        train: The un-augmented training inputs and labels (NC1 is measured on these, as the
            final ``train_nc1`` is).
        num_classes: The number of classes (NC1's normalization).

    Returns:
        One dict per member, in ``predict``'s member order. NC1 is NaN for a member whose
        features are not finite (it diverged this epoch; its row is dropped anyway).
    """
    train_x, train_y = train
    _, feats = predict(train_x)
    out = [dict.fromkeys(EPOCH_METRICS, math.nan) for _ in range(len(feats))]
    for k, row in enumerate(out):
        row["train_nc1"] = metrics.nc1(feats[k], train_y, num_classes)  # NaN if not finite
    val_x, val_y = val
    if len(val_y):
        logits, _ = predict(val_x)
        for k, row in enumerate(out):
            row["val_acc"] = metrics.accuracy(logits[k], val_y)
            row["val_ece"] = metrics.ece(logits[k], val_y)
    return out

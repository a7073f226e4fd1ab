"""``train(cfg)``: one distillation run, ``TrainConfig`` in, ``TrainResult`` out.

It loads the data and the (cached) teacher, trains the student with :func:`dgkd.loop.fit`
(reporting ``val_acc`` after every epoch, so a search can prune), and measures the final metrics
on the last epoch's model: never the best epoch, and the test split only once, at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dgkd import metrics
from dgkd.config import ConfigError, TrainConfig
from dgkd.data import Splits, load_splits
from dgkd.loop import Report, fit, predict, resolve_device
from dgkd.losses import grad_terms
from dgkd.runtime import set_threads
from dgkd.teacher import TeacherBundle, load_teacher

__all__ = ["TrainResult", "evaluate", "splits_for", "train"]


@dataclass
class TrainResult:
    """Final metrics of a run (last epoch), its per-epoch history and its config."""

    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    duration_s: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # the trained student


def splits_for(cfg: TrainConfig) -> Splits:
    """The data splits a config trains and evaluates on."""
    return load_splits(
        cfg.dataset,
        data_root=cfg.data_root,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
    )


def train(cfg: TrainConfig, *, report: Report | None = None, progress: bool = False) -> TrainResult:
    """Distill the configured teacher into a fresh student and measure it.

    Args:
        cfg: The run's configuration.
        report: Called as ``report(epoch, metrics)`` after every epoch with at least
            ``val_acc`` and ``train_loss``. It may raise (e.g. to prune); the run then stops.
        progress: Show rich progress bars (teacher training, epochs) on the terminal.

    Returns:
        A :class:`TrainResult` whose ``metrics`` hold ``val_acc``, ``test_acc``,
        ``test_agreement``, ``test_kl_to_teacher``, ``test_ece``, ``train_nc1``, ``grad_cos``,
        ``grad_norm_tckd``, ``grad_norm_nckd``, ``teacher_test_acc`` and more, from the last epoch.

    Raises:
        ConfigError: invalid configuration for this data (e.g. dkd with fewer than 3 classes).
        DivergedError: the loss became non-finite.
    """
    previous = set_threads(cfg.threads) if cfg.threads else None
    try:
        return _train(cfg, report=report, progress=progress)
    finally:
        if previous is not None:
            set_threads(previous)


def _train(cfg: TrainConfig, *, report: Report | None, progress: bool) -> TrainResult:
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    splits = splits_for(cfg)
    if cfg.method in ("dkd", "dgkd") and splits.num_classes < 3:
        raise ConfigError(
            f"method {cfg.method} needs at least 3 classes ({cfg.dataset} has "
            f"{splits.num_classes}): NCKD is undefined; use kd or ce"
        )
    bundle: TeacherBundle = load_teacher(cfg, splits, device=device, progress=progress)
    model, history = fit(
        cfg,
        splits,
        teacher=bundle.model,
        teacher_train_logits=None if splits.augment else bundle.train_logits,
        device=device,
        report=report,
        progress=progress,
    )
    final = evaluate(cfg, splits, model, bundle, device=device)
    final["epochs"] = float(cfg.epochs)
    final["train_loss"] = history[-1]["train_loss"]
    final["duration_s"] = time.perf_counter() - start
    return TrainResult(cfg, final, history, final["duration_s"], model)


def evaluate(
    cfg: TrainConfig,
    splits: Splits,
    model: nn.Module,
    bundle: TeacherBundle,
    *,
    device: torch.device,
) -> dict[str, float]:
    """The final metrics of a trained student against its teacher."""
    kw = {"device": device, "batch_size": cfg.eval_batch_size, "amp": cfg.amp}
    test_logits, _ = predict(model, splits, splits.test_x, **kw)
    train_logits, train_feats = predict(model, splits, splits.train_x, **kw)
    test_y, train_y = splits.test_y.to(device), splits.train_y.to(device)
    out = {
        "val_acc": float("nan"),
        "test_acc": metrics.accuracy(test_logits, test_y),
        "test_agreement": metrics.agreement(test_logits, bundle.test_logits),
        "test_kl_to_teacher": metrics.kl_to_teacher(test_logits, bundle.test_logits),
        "test_ece": metrics.ece(test_logits, test_y),
        "train_acc": metrics.accuracy(train_logits, train_y),
        "train_nc1": metrics.nc1(train_feats, train_y, splits.num_classes),
        "teacher_test_acc": metrics.accuracy(bundle.test_logits, test_y),
    }
    if len(splits.val_y):
        val_logits, _ = predict(model, splits, splits.val_x, **kw)
        out["val_acc"] = metrics.accuracy(val_logits, splits.val_y.to(device))
    out.update(_gradient_diagnostics(cfg, train_logits, bundle.train_logits, train_y, splits))
    return out


def _gradient_diagnostics(
    cfg: TrainConfig, logits_s: Tensor, logits_t: Tensor, target: Tensor, splits: Splits
) -> dict[str, float]:
    """Mean over training batches of cos(g_T, g_N) and the L2 norms of both fields.

    Computed for every method on the final model (eval mode, un-augmented inputs), so that
    DGKD's effect on the two gradient fields compares against DKD, KD and CE.
    """
    if splits.num_classes < 3:
        return {}
    cos, norm_t, norm_n, count = 0.0, 0.0, 0.0, 0
    bs = cfg.batch_size
    for start in range(0, len(target), bs):
        sl = slice(start, start + bs)
        g_t, g_n = grad_terms(logits_s[sl], logits_t[sl], target[sl], temperature=cfg.temperature)
        dots = (g_t * g_n).sum(1)
        norms = g_t.norm(dim=1) * g_n.norm(dim=1)
        cos += torch.where(norms > 0, dots / norms.clamp_min(1e-38), 0.0).mean().item()
        norm_t += g_t.norm().item()
        norm_n += g_n.norm().item()
        count += 1
    return {
        "grad_cos": cos / count,
        "grad_norm_tckd": norm_t / count,
        "grad_norm_nckd": norm_n / count,
    }

"""The one training loop, shared by the teacher and every student.

``fit`` trains a fresh model and returns it with its per-epoch history; ``predict`` runs it in
eval mode; ``distill_loss`` is the step's loss for each method. Nothing here reads files or knows
about teachers' caches, searches or metrics beyond validation accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgkd import metrics
from dgkd.config import ConfigError, TrainConfig
from dgkd.data import Splits
from dgkd.losses import TeacherStats, dgkd_loss, kd_loss, teacher_stats
from dgkd.models import build_model, has_width
from dgkd.progress import Bar

__all__ = [
    "DivergedError",
    "Report",
    "build_optimizer",
    "build_scheduler",
    "distill_loss",
    "fit",
    "predict",
    "resolve_device",
]

Report = Callable[[int, dict[str, float]], None]


class DivergedError(RuntimeError):
    """The training loss became non-finite; carries where, so a search can record it."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}; lower lr or epsilon, "
            "or use grad_term='normalized'"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available; use device=auto")
    return torch.device(name)


def distill_loss(
    cfg: TrainConfig,
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    weight: float,
    *,
    stats: TeacherStats | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step's training loss: ``ce_weight * CE + weight * distillation`` and its terms.

    ``weight`` is the warmup factor ``min(epoch / warmup, 1)``; ``stats`` optionally carries the
    batch's precomputed teacher side for dkd/dgkd. Pure: no state, no side effects.
    """
    if cfg.method in ("dkd", "dgkd"):
        # The warmup factor scales the three weights (the term is linear in them), and CE is
        # fused into the same node: the step's loss is one forward and one closed-form backward.
        out = dgkd_loss(
            logits_s,
            logits_t,
            target,
            alpha=weight * cfg.alpha,
            beta=weight * cfg.beta,
            epsilon=weight * cfg.epsilon if cfg.method == "dgkd" else 0.0,
            temperature=cfg.temperature,
            grad_term=cfg.grad_term,
            grad_sign=cfg.grad_sign,
            stats=stats,
            ce_weight=cfg.ce_weight,
        )
        return out.pop("loss"), out
    ce = F.cross_entropy(logits_s.float(), target)
    loss = cfg.ce_weight * ce
    terms: dict[str, Tensor] = {"ce": ce.detach()}
    if cfg.method == "kd":
        kd = kd_loss(logits_s, logits_t, temperature=cfg.temperature)
        loss = loss + weight * cfg.kd_weight * kd
        terms["kd"] = kd.detach()
    return loss, terms


def build_optimizer(
    cfg: TrainConfig, params: Iterable[nn.Parameter], lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer, with its fused kernel (one per parameter, not a dozen small
    operations each) on CPU and CUDA: on the default student it is a third of the step."""
    fused = device.type in ("cpu", "cuda")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)


def build_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured per-epoch learning-rate schedule over ``epochs``."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


@torch.no_grad()
def predict(
    model: nn.Module,
    splits: Splits,
    x: Tensor,
    *,
    device: torch.device,
    batch_size: int,
    amp: bool = False,
) -> tuple[Tensor, Tensor]:
    """Eval-mode logits and features of ``x`` (float32, on ``device``)."""
    model.eval()
    logits, feats = [], []
    for start in range(0, len(x), batch_size):
        with _autocast(device, amp):
            lo, fe = model(splits.inputs(x[start : start + batch_size].to(device)))
        logits.append(lo.float())
        feats.append(fe.float())
    return torch.cat(logits), torch.cat(feats)


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def fit(
    cfg: TrainConfig,
    splits: Splits,
    *,
    teacher: nn.Module | None,
    teacher_train_logits: Tensor | None,
    device: torch.device,
    report: Report | None = None,
    progress: bool = False,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh model for ``cfg.epochs`` and return it with its per-epoch history.

    The teacher's logits come from ``teacher_train_logits`` (indexed by example) when the
    training inputs are not augmented, else from a teacher forward pass on each batch.
    """
    name, epochs = cfg.student, cfg.epochs
    width = cfg.student_width if has_width(name) else 0
    torch.manual_seed(cfg.seed)
    model = build_model(
        name, num_classes=splits.num_classes, input_shape=splits.input_shape, width=width or None
    ).to(device)
    params = list(model.parameters())
    opt = build_optimizer(cfg, params, cfg.lr, device)
    sched = build_scheduler(cfg, opt, epochs)
    order = torch.Generator().manual_seed(cfg.seed)
    aug = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    val_x, val_y = splits.val_x.to(device), splits.val_y.to(device)
    n, bs = len(train_y), cfg.batch_size
    needs_teacher = cfg.method != "ce"
    stats = None  # the teacher's side of dkd/dgkd, once per run when its logits are cached
    if cfg.method in ("dkd", "dgkd") and teacher_train_logits is not None:
        stats = teacher_stats(teacher_train_logits, train_y, temperature=cfg.temperature)
    history: list[dict[str, float]] = []
    bar = Bar(progress, f"training {name}", epochs)
    with bar:
        for epoch in range(1, epochs + 1):
            model.train()
            weight = min(epoch / cfg.warmup, 1.0) if cfg.warmup else 1.0
            perm = torch.randperm(n, generator=order).to(device)
            # The epoch's examples in its order, once: each batch is then a slice (a view).
            xs, ys = train_x.index_select(0, perm), train_y.index_select(0, perm)
            stats_e = None if stats is None else stats.select(perm)
            logits_te = None
            if needs_teacher and stats is None and teacher_train_logits is not None:
                logits_te = teacher_train_logits.index_select(0, perm)
            running, steps, keys = None, 0, ()  # sum over the epoch's steps of loss and terms
            # A last batch of one example would break BatchNorm; fold it away.
            for start in range(0, n - (1 if n % bs == 1 else 0), bs):
                batch = slice(start, start + bs)
                x = splits.inputs(xs[batch], train=True, generator=aug)
                with _autocast(device, cfg.amp):
                    logits, _ = model(x)
                    logits_t = None if logits_te is None else logits_te[batch]
                    if needs_teacher and stats is None and logits_te is None:
                        with torch.no_grad():
                            logits_t = teacher(x)[0].float()
                batch_stats = None if stats_e is None else stats_e.rows(batch)
                loss, terms = distill_loss(
                    cfg, logits, logits_t, ys[batch], weight, stats=batch_stats
                )
                if not torch.isfinite(loss):
                    raise DivergedError(epoch, steps + 1, loss.item())
                for p in params:  # as opt.zero_grad(set_to_none=True), without its ~40 us wrappers
                    p.grad = None
                loss.backward()
                opt.step()
                values = torch.stack([loss.detach(), *terms.values()])  # one add per step
                running = values if running is None else running + values
                steps += 1
                keys = ("train_loss", *terms)
            sched.step()
            row = {"epoch": float(epoch)}
            row.update(zip(keys, (running / steps).tolist(), strict=True))
            row["val_acc"] = float("nan")  # no validation split (val_fraction 0)
            if len(val_y):
                val_logits, _ = predict(
                    model, splits, val_x, device=device, batch_size=cfg.eval_batch_size, amp=cfg.amp
                )
                row["val_acc"] = metrics.accuracy(val_logits, val_y)
            history.append(row)
            bar.advance(f"val_acc {row['val_acc']:.3f}")
            if report is not None:
                report(epoch, dict(row))
    return model, history

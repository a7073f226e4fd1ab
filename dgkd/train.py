"""The one training loop: ``TrainConfig`` in, ``TrainResult`` out.

``train(cfg)`` loads the data and the (cached) teacher, trains the student with the configured
method, reports ``val_acc`` after every epoch (so a search can prune), and measures the final
metrics on the last epoch's model: never the best epoch, and the test split only once, at the end.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgkd import metrics
from dgkd.data import DATASETS, Splits, load_splits
from dgkd.losses import TeacherStats, dgkd_loss, grad_terms, kd_loss, teacher_stats
from dgkd.models import MODEL_NAMES, SEQUENCE_MODELS, build_model, has_width
from dgkd.progress import Bar

__all__ = [
    "METHODS",
    "ConfigError",
    "DivergedError",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "distill_loss",
    "parse_overrides",
    "train",
]

METHODS = ("ce", "kd", "dkd", "dgkd")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep")
DEVICES = ("auto", "cpu", "cuda")

Report = Callable[[int, dict[str, float]], None]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class DivergedError(RuntimeError):
    """The training loss became non-finite; carries where, so a search can record it."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}; lower lr or epsilon, "
            "or use grad_term='normalized'"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run. Same config, same metrics.

    The defaults are the embedded MNIST-1D setup: a width-64 1-D CNN teacher (~95% test accuracy)
    and a width-8 student (~61% alone), DKD's alpha/beta/T, and epsilon 6 (the reference default).
    """

    # --- data ---
    dataset: str = "mnist1d"  # one of dgkd.data.DATASETS
    data_root: str = ""  # image datasets' directory; "" = $DGKD_CACHE/data
    download: bool = False  # let torchvision download missing image files
    val_fraction: float = 0.1  # share of train held out for validation, in [0, 1)
    split_seed: int = 0  # seed of the validation split; shared by all runs so trials compare
    # --- models ---
    teacher: str = "cnn1d"  # teacher architecture (dgkd.models.MODEL_NAMES)
    teacher_width: int = 64  # width of a cnn1d/mlp teacher (0 = default); image models ignore it
    teacher_epochs: int = 60  # epochs of the teacher's own (CE) training
    teacher_lr: float = 0.0  # teacher learning rate; 0 = same as lr
    teacher_seed: int = 0  # one teacher per setup, shared by every student seed
    teacher_checkpoint: str = ""  # state_dict file to load instead of training a teacher
    student: str = "cnn1d"  # student architecture
    student_width: int = 8  # width of a cnn1d/mlp student (0 = default); image models ignore it
    # --- method ---
    method: str = "dgkd"  # ce | kd | dkd | dgkd
    alpha: float = 1.0  # TCKD weight (DKD default)
    beta: float = 8.0  # NCKD weight (DKD default for resnet32x4 -> resnet8x4)
    epsilon: float = 6.0  # weight of the gradient term; 0 = DKD (reference default 6)
    temperature: float = 4.0  # distillation temperature T (dkd, dgkd, kd)
    grad_term: str = "normalized"  # "normalized" = M/stopgrad(M) (reference code), "raw" = M
    grad_sign: float = -1.0  # -1 maximizes M (the method), +1 minimizes it (ablation)
    ce_weight: float = 1.0  # weight of cross-entropy on the labels (all methods)
    kd_weight: float = 1.0  # weight of Hinton's KD term (method kd)
    warmup: int = 5  # distillation weight = min(epoch / warmup, 1); 0 = no warmup
    # --- optimization ---
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 0.01  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 (sgd, adam) or decoupled (adamw) weight decay
    schedule: str = "cosine"  # constant | cosine | multistep, stepped once per epoch
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1  # multistep decay factor
    epochs: int = 40  # student training epochs
    batch_size: int = 128  # training batch size
    # --- runtime ---
    seed: int = 0  # seeds init, data order and augmentation
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    amp: bool = False  # bfloat16 autocast on CUDA (ignored on the CPU)
    eval_batch_size: int = 1024  # batch size of evaluation passes
    # CPU threads for the run, 0 = leave torch's setting (a search then gives each worker
    # cores // workers). Default 1: MNIST-1D-sized models run fastest on one thread, and float
    # results then do not depend on how many workers share the machine.
    threads: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        _validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}; see 'dgkd-train --help'")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def _validate(cfg: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), hints[f.name]
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(kind, True)
        if kind == tuple[int, ...]:
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ConfigError(f"{f.name} must be of type {_type_name(kind)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be finite, got {value}")

    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{name} must be {allowed}, got {getattr(cfg, name)!r}")

    need(cfg.dataset in DATASETS, "dataset", "one of " + ", ".join(DATASETS))
    need(cfg.teacher in MODEL_NAMES, "teacher", "one of " + ", ".join(MODEL_NAMES))
    need(cfg.student in MODEL_NAMES, "student", "one of " + ", ".join(MODEL_NAMES))
    need(cfg.method in METHODS, "method", "one of " + ", ".join(METHODS))
    sequence_data = cfg.dataset == "mnist1d"
    for name in ("teacher", "student"):
        arch = getattr(cfg, name)
        if (arch in SEQUENCE_MODELS) != sequence_data:
            kind = "a sequence model (cnn1d, mlp)" if sequence_data else "a 32x32 image model"
            raise ConfigError(f"{name} {arch!r} does not fit dataset {cfg.dataset!r}: use {kind}")
    need(cfg.optimizer in OPTIMIZERS, "optimizer", "one of " + ", ".join(OPTIMIZERS))
    need(cfg.schedule in SCHEDULES, "schedule", "one of " + ", ".join(SCHEDULES))
    need(cfg.device in DEVICES, "device", "one of " + ", ".join(DEVICES))
    need(cfg.grad_term in ("normalized", "raw"), "grad_term", "'normalized' or 'raw'")
    need(cfg.grad_sign in (-1.0, 1.0), "grad_sign", "-1 or 1")
    need(0.0 <= cfg.val_fraction < 1.0, "val_fraction", "in [0, 1)")
    need(cfg.temperature > 0, "temperature", "> 0")
    for name in ("alpha", "beta", "epsilon", "ce_weight", "kd_weight", "weight_decay", "momentum"):
        need(getattr(cfg, name) >= 0, name, ">= 0")
    need(cfg.lr > 0, "lr", "> 0")
    need(cfg.teacher_lr >= 0, "teacher_lr", ">= 0 (0 = same as lr)")
    need(0 < cfg.gamma <= 1, "gamma", "in (0, 1]")
    for name in ("epochs", "teacher_epochs", "batch_size", "eval_batch_size"):
        need(getattr(cfg, name) >= 1, name, ">= 1")
    for name in ("warmup", "teacher_width", "student_width", "threads"):
        need(getattr(cfg, name) >= 0, name, ">= 0")
    need(
        list(cfg.milestones) == sorted(set(cfg.milestones)) and all(m >= 1 for m in cfg.milestones),
        "milestones",
        "increasing positive epochs, e.g. 150,180,210",
    )
    need(
        cfg.schedule != "multistep" or bool(cfg.milestones),
        "milestones",
        "set for schedule 'multistep'",
    )


def _type_name(kind: Any) -> str:
    return "list of ints" if kind == tuple[int, ...] else getattr(kind, "__name__", str(kind))


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into typed config changes (for ``--set``).

    Booleans accept true/false/1/0/yes/no; milestones a comma-separated list of ints.

    Raises:
        ConfigError: malformed item, unknown key, or a value of the wrong type.
    """
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in hints:
            raise ConfigError(
                f"unknown config field {key!r}; valid fields: {', '.join(field_names())}"
            )
        out[key] = coerce(key, raw.strip(), hints[key])
    return out


def coerce(key: str, raw: Any, kind: Any = None) -> Any:
    """Convert a string (from the command line) or a TOML value to the field's type."""
    kind = kind or typing.get_type_hints(TrainConfig)[key]
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if kind == tuple[int, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(int(v) for v in raw)
            return tuple(int(v) for v in str(raw).split(",") if v.strip())
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {_type_name(kind)}, got {raw!r}") from None


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


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, epochs: int):
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


def _autocast(device: torch.device, amp: bool):
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
    sched = _scheduler(cfg, opt, epochs)
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
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, report=report, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _train(cfg: TrainConfig, *, report: Report | None, progress: bool) -> TrainResult:
    from dgkd.teacher import TeacherBundle, load_teacher

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
    cfg: TrainConfig, splits: Splits, model: nn.Module, bundle, *, device: torch.device
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

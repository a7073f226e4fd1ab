"""``train(cfg)``: one distillation run, ``TrainConfig`` in, ``TrainResult`` out; and
``train_population(cfgs)``: many at once, each the same experiment as its ``train(cfg)``.

Both load the data and the (cached) teacher, train the students with
:func:`dgkd.loop.fit_population` (reporting ``val_acc`` after every epoch, so a search can
prune), and measure the final metrics on the last epoch's model: never the best epoch, and the
test split only once, at the end. ``train(cfg)`` is ``train_population([cfg])[0]``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dgkd import metrics
from dgkd.checkpoint import Checkpoint, as_checkpoint
from dgkd.config import ConfigError, TrainConfig, check_method, field_names
from dgkd.data import Splits, input_spec, load_splits
from dgkd.loop import (
    MEMBER_FIELDS,
    PopulationReport,
    Report,
    fit_population,
    predict,
    resolve_device,
)
from dgkd.losses import grad_terms
from dgkd.models import activation_bytes, has_width
from dgkd.runtime import set_threads
from dgkd.teacher import TeacherBundle, load_teacher, teacher_key

__all__ = [
    "POPULATION_BUDGET_BYTES",
    "TrainResult",
    "evaluate",
    "max_population",
    "population_groups",
    "splits_for",
    "train",
    "train_population",
]


@dataclass
class TrainResult:
    """Final metrics of a run (last epoch), its per-epoch history and its config.

    A population member stopped early (its report raised, e.g. to prune, or its loss diverged)
    has ``error`` set, its history up to then, no metrics and no model; ``train`` raises it.
    """

    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    duration_s: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # the trained student
    error: Exception | None = field(default=None, repr=False)
    num_classes: int = 0  # of the data it trained on: what build_model needs besides the config
    input_shape: tuple[int, ...] = ()


def splits_for(cfg: TrainConfig) -> Splits:
    """The data splits a config trains and evaluates on."""
    return load_splits(
        cfg.dataset,
        data_root=cfg.data_root,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        val_pool=cfg.val_pool,
        test_pool=cfg.test_pool,
    )


def train(
    cfg: TrainConfig,
    *,
    report: Report | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
) -> TrainResult:
    """Distill the configured teacher into a fresh student and measure it.

    Args:
        cfg: The run's configuration.
        report: Called as ``report(epoch, metrics)`` after every epoch with at least
            ``val_acc`` and ``train_loss`` (``val_acc`` NaN at an epoch not evaluated:
            ``cfg.eval_every``). It may raise (e.g. to prune); the run then stops.
            On an MNIST-1D validation pool that ``val_acc`` (and the history's) is measured on
            the pool's first :data:`dgkd.data.EPOCH_VAL_EXAMPLES`, the final one on all of it.
        progress: Show rich progress bars (teacher training, epochs) on the terminal.
        checkpoint: A directory (or :class:`~dgkd.checkpoint.Checkpoint`) to save the run's
            state in every ``cfg.checkpoint_every`` epochs and when interrupted; a state saved
            there by the same config is resumed first, and the run ends exactly as an
            uninterrupted one. The caller deletes it (:func:`dgkd.checkpoint.clear`) once the
            results are kept.

    Returns:
        A :class:`TrainResult` whose ``metrics`` hold ``val_acc``, ``test_acc``,
        ``published_test_acc``, ``test_agreement``, ``test_kl_to_teacher``, ``test_ece``,
        ``train_nc1``, ``grad_cos``, ``grad_norm_tckd``, ``grad_norm_nckd``,
        ``teacher_test_acc`` and more, from the last epoch (:func:`evaluate` says on what).

    Raises:
        ConfigError: invalid configuration for this data (e.g. dkd with fewer than 3 classes).
        DivergedError: the loss became non-finite.
    """
    on_epoch = None if report is None else (lambda _member, epoch, row: report(epoch, row))
    (result,) = train_population([cfg], report=on_epoch, progress=progress, checkpoint=checkpoint)
    if result.error is not None:
        raise result.error
    return result


def train_population(
    cfgs: Sequence[TrainConfig],
    *,
    report: PopulationReport | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
) -> list[TrainResult]:
    """Train every config, sharing tensor operations: ``results[i]`` is ``train(cfgs[i])``.

    Configs that may share a population (:func:`population_groups`: they differ only in seed,
    loss settings, lr and weight decay) train as one, K students in one set of tensor
    operations, up to :func:`max_population` of them (more are cut into several); the others as
    further populations, one after another. A member's results do not depend on its neighbours:
    they are those of its own ``train(cfg)``.

    Args:
        cfgs: The runs' configurations.
        report: Called as ``report(i, epoch, metrics)`` after every epoch of ``cfgs[i]``. If it
            raises (e.g. to prune), that member stops, and its result carries the exception in
            ``error``; the others go on.
        progress: Show rich progress bars on the terminal.
        checkpoint: As for :func:`train`: each population keeps its own file there.

    Returns:
        One :class:`TrainResult` per config, in order. A member stopped early has ``error`` set
        (the exception of its report, or a ``DivergedError``) and no metrics. ``duration_s`` is
        its population's wall time.

    Raises:
        ConfigError: invalid configuration for this data (e.g. dkd with fewer than 3 classes).
    """
    results: list[TrainResult | None] = [None] * len(cfgs)
    keep = as_checkpoint(checkpoint)
    for group in population_groups(cfgs):
        members = [cfgs[i] for i in group]

        def on_epoch(k: int, epoch: int, row: dict[str, float], group=group) -> None:
            if report is not None:
                report(group[k], epoch, row)

        threads = members[0].threads
        previous = set_threads(threads) if threads else None
        try:
            done = _train_population(members, report=on_epoch, progress=progress, checkpoint=keep)
        finally:
            if previous is not None:
                set_threads(previous)
        for i, result in zip(group, done, strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def population_groups(cfgs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``cfgs`` grouped into populations: equal in every field but
    :data:`~dgkd.loop.MEMBER_FIELDS`, and sharing one teacher (with ``teacher_lr=0`` the
    teacher trains at the student's lr, so lr can split a group), in first-seen order; a group
    larger than :func:`max_population` is cut into consecutive populations of near-equal size
    within it (33 at a cap of 8: 7, 7, 7, 6, 6), which train one after another."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        shared = tuple(getattr(cfg, k) for k in field_names() if k not in MEMBER_FIELDS)
        key = (*shared, cfg.teacher_checkpoint or teacher_key(cfg))
        groups.setdefault(key, []).append(i)
    out: list[list[int]] = []
    for group in groups.values():
        cap = _cap(cfgs[group[0]]) if len(group) > 1 else 0
        count = -(-len(group) // cap) if cap else 1
        start = 0
        for j in range(count):
            n = len(group) // count + (j < len(group) % count)
            out.append(group[start : start + n])
            start += n
    return out


# Budget of K x activation_bytes on a CPU, from BENCHMARKS.md's seed-runs per hour on one thread
# of the 2-core AMD EPYC (32 MiB L3): width-24 cnn1d members (1.03 MiB each at batch 128) ran
# fastest at K = 4-8 (1.45x sequential) and slower from 16 on (1.10x; 0.86x at 32), width-8 ones
# (0.37 MiB) fastest at K = 16 (2.98x), slowly less beyond (2.67x at 32). 8.5 MiB gives caps of 8
# and 22; K x FLOPs per member-step (7.3x apart) cannot give both, K x width x length (3x) nearly.
POPULATION_BUDGET_BYTES = 17 * 2**19


def max_population(cfg: TrainConfig, device: torch.device) -> int:
    """The most members like ``cfg`` that train as one population on ``device``; 0: no cap.

    On a CPU the members' working set is budgeted: K x :func:`dgkd.models.activation_bytes`
    of one training batch at most :data:`POPULATION_BUDGET_BYTES` (at least 1 member), since
    beyond it a population was measured slower per member than a smaller one, and even than
    runs one at a time. On a GPU there is no cap: it is where populations pay most. The
    environment variable ``DGKD_MAX_POPULATION`` overrides both (a whole number; 0: no cap).

    Raises:
        ConfigError: ``DGKD_MAX_POPULATION`` is not a whole number.
    """
    raw = os.environ.get("DGKD_MAX_POPULATION", "").strip()
    if raw:
        if not raw.isdigit():
            raise ConfigError(f"DGKD_MAX_POPULATION must be a whole number >= 0, got {raw!r}")
        return int(raw)
    if device.type != "cpu":
        return 0
    width = cfg.student_width if has_width(cfg.student) else 0
    size = _member_bytes(cfg.student, width, cfg.dataset, cfg.batch_size)
    return max(1, POPULATION_BUDGET_BYTES // size)


def _cap(cfg: TrainConfig) -> int:
    """:func:`max_population` on ``cfg``'s device; none where that device is missing (training
    says so)."""
    try:
        device = resolve_device(cfg.device)
    except ConfigError:
        return 0
    return max_population(cfg, device)


@functools.lru_cache(maxsize=64)
def _member_bytes(student: str, width: int, dataset: str, batch_size: int) -> int:
    shape, classes = input_spec(dataset)
    return activation_bytes(
        student,
        num_classes=classes,
        input_shape=shape,
        width=width or None,
        batch_size=batch_size,
    )


def _train_population(
    cfgs: list[TrainConfig],
    *,
    report: PopulationReport,
    progress: bool,
    checkpoint: Checkpoint | None,
) -> list[TrainResult]:
    start = time.perf_counter()
    cfg = cfgs[0]
    device = resolve_device(cfg.device)
    splits = splits_for(cfg)
    for c in cfgs:
        method = check_method(c.method)
        if splits.num_classes < method.min_classes:
            why = ": NCKD is undefined" if method.fused == "dkd" else ""
            raise ConfigError(
                f"method {c.method} needs at least {method.min_classes} classes ({c.dataset} "
                f"has {splits.num_classes}){why}; use kd or ce"
            )
    bundle: TeacherBundle = load_teacher(cfg, splits, device=device, progress=progress)
    runs = fit_population(
        cfgs,
        splits,
        teacher=bundle.model,
        teacher_train_logits=None if splits.augment else bundle.train_logits,
        device=device,
        report=report,
        progress=progress,
        checkpoint=checkpoint,
    )
    results = []
    for member, run in zip(cfgs, runs, strict=True):
        if run.error is not None or run.model is None:
            results.append(TrainResult(member, {}, run.history, model=None, error=run.error))
            continue
        final = evaluate(member, splits, run.model, bundle, device=device)
        final["epochs"] = float(member.epochs)
        final["train_loss"] = run.history[-1]["train_loss"]
        results.append(TrainResult(member, final, run.history, model=run.model))
    duration = time.perf_counter() - start
    for result in results:
        result.duration_s = duration
        result.num_classes, result.input_shape = splits.num_classes, tuple(splits.input_shape)
        if result.error is None:
            result.metrics["duration_s"] = duration
    return results


def evaluate(
    cfg: TrainConfig,
    splits: Splits,
    model: nn.Module,
    bundle: TeacherBundle,
    *,
    device: torch.device,
) -> dict[str, float]:
    """The final metrics of a trained student against its teacher.

    Every ``test_*`` metric is on the test split (MNIST-1D: the generated test pool),
    ``val_acc`` on the whole validation split (MNIST-1D: the whole pool, where the per-epoch
    ``val_acc`` reads a prefix of it: :data:`dgkd.data.EPOCH_VAL_EXAMPLES`), and
    ``published_test_acc`` and ``teacher_published_test_acc`` on the dataset's published test
    set: MNIST-1D's 1000, comparable with the literature; where that is the test split (image
    data, ``test_pool`` 0) they equal ``test_acc`` and ``teacher_test_acc``.
    """
    run = functools.partial(
        predict, model, splits, device=device, batch_size=cfg.eval_batch_size, amp=cfg.amp
    )
    test_logits, _ = run(splits.test_x)
    train_logits, train_feats = run(splits.train_x)
    test_y, train_y = splits.test_y.to(device), splits.train_y.to(device)
    published_logits, published_y = test_logits, test_y
    if not splits.published_is_test:
        published_logits, _ = run(splits.published_test_x)
        published_y = splits.published_test_y.to(device)
    out = {
        "val_acc": float("nan"),
        "test_acc": metrics.accuracy(test_logits, test_y),
        "published_test_acc": metrics.accuracy(published_logits, published_y),
        "test_agreement": metrics.agreement(test_logits, bundle.test_logits),
        "test_kl_to_teacher": metrics.kl_to_teacher(test_logits, bundle.test_logits),
        "test_ece": metrics.ece(test_logits, test_y),
        "train_acc": metrics.accuracy(train_logits, train_y),
        "train_nc1": metrics.nc1(train_feats, train_y, splits.num_classes),
        "teacher_test_acc": metrics.accuracy(bundle.test_logits, test_y),
        "teacher_published_test_acc": metrics.accuracy(bundle.published_test_logits, published_y),
    }
    if len(splits.val_y):
        val_logits, _ = run(splits.val_x)
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
